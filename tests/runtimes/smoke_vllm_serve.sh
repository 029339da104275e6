#!/usr/bin/env bash
# smoke_vllm_serve.sh VENV_DIR HF_DIR [extra vllm args...]
# Starts VENV_DIR/bin/vllm-serve on 127.0.0.1:<free port> in its own process
# group, waits for GET /v1/models == 200, sends one non-streamed and one
# streamed 16-token chat completion, SIGTERMs the server and checks that the
# whole process group is gone. Prints timings and per-process RSS/PSS.
set -euo pipefail
venv="${1:?usage: smoke_vllm_serve.sh VENV_DIR HF_DIR [extra args]}"
hf="${2:?usage: smoke_vllm_serve.sh VENV_DIR HF_DIR [extra args]}"
shift 2
py="$venv/bin/python"
wrapper="$venv/bin/vllm-serve"
[[ -x "$wrapper" ]] || wrapper="$(cd "$(dirname "$0")" && pwd)/vllm-serve"
export VLLM_VENV="$venv"
port="$("$py" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')"
log="${SMOKE_LOG:-$(mktemp /tmp/vllm-smoke.XXXXXX.log)}"
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

cmd=("$wrapper" serve "$hf" --host 127.0.0.1 --port "$port" --served-model-name smollm2-vllm --max-num-seqs 2 "$@")
echo "command: ${cmd[*]}"
echo "log: $log"
t0="$(now)"
setsid "${cmd[@]}" >"$log" 2>&1 &
pid=$!
cleanup() { kill -KILL -- "-$pid" 2>/dev/null || true; }
trap cleanup EXIT

up=""
for _ in $(seq 1 600); do
    if ! kill -0 "$pid" 2>/dev/null; then echo "server died; last log lines:"; tail -30 "$log"; exit 1; fi
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/models" || true)"
    if [[ "$code" == 200 ]]; then up=1; break; fi
    sleep 0.5
done
[[ -n "$up" ]] || { echo "server not up after 300 s"; tail -30 "$log"; exit 1; }
echo "startup: $(since "$t0") s to first 200 from /v1/models (pid $pid, port $port)"
curl -s "http://127.0.0.1:$port/v1/models"; echo

body='{"model":"smollm2-vllm","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"stream":%s}'
echo "--- stream=false"
curl -sS -w '\n[http %{http_code}, %{time_total}s]\n' "http://127.0.0.1:$port/v1/chat/completions" \
    -H 'Content-Type: application/json' -d "$(printf "$body" false)"
echo "--- stream=true"
curl -sS -N -w '\n[http %{http_code}, %{time_total}s]\n' "http://127.0.0.1:$port/v1/chat/completions" \
    -H 'Content-Type: application/json' -d "$(printf "$body" true)"
echo "--- latency of 5 more non-streamed 16-token completions (s):"
for _ in 1 2 3 4 5; do
    curl -s -o /dev/null -w '%{time_total} ' "http://127.0.0.1:$port/v1/chat/completions" \
        -H 'Content-Type: application/json' \
        -d '{"model":"smollm2-vllm","messages":[{"role":"user","content":"Tell me a story."}],"max_tokens":16,"min_tokens":16,"stream":false}'
done
echo
echo "--- processes and memory (kB)"
total_rss=0; total_pss=0
for p in $(ps -o pid= -g "$pid"); do
    rss="$(awk '/^Rss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null || echo 0)"
    pss="$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null || echo 0)"
    total_rss=$((total_rss + rss)); total_pss=$((total_pss + pss))
    printf '%7s rss=%8s pss=%8s %s\n' "$p" "$rss" "$pss" "$(ps -o args= -p "$p" | cut -c1-90)"
done
echo "total rss=${total_rss} kB pss=${total_pss} kB"
echo "--- listening sockets of the group"
ss -ltnpH 2>/dev/null | grep -E "pid=($(ps -o pid= -g "$pid" | tr -s ' \n' '|' | sed 's/^|//;s/|$//'))," || true

echo "--- SIGTERM $pid"
t1="$(now)"
kill -TERM "$pid"
for _ in $(seq 1 120); do
    ps -o pid= -g "$pid" >/dev/null || break
    sleep 0.25
done
if ps -o pid,pgid,stat,args -g "$pid"; then
    echo "FAIL: processes left in group $pid after $(since "$t1") s"; exit 1
fi
trap - EXIT
echo "OK: process group $pid gone $(since "$t1") s after SIGTERM"
