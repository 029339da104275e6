#!/usr/bin/env python3
"""A tiny OpenAI-compatible chat server that misbehaves on request (stdlib only).

Stands in for llama-server / vllm serve in process tests: it accepts (and ignores) their
flags, serves /health, /v1/models and streamed or plain /v1/chat/completions, and the
--fake-* flags make it fail the ways real runtimes fail.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--alias", "--served-model-name", dest="alias", default="fake")
parser.add_argument("--fake-tokens", type=int, default=8)
parser.add_argument("--fake-token-delay", type=float, default=0.01)
parser.add_argument("--fake-startup-delay", type=float, default=0.0)
parser.add_argument("--fake-never-ready", action="store_true")
parser.add_argument("--fake-ignore-sigterm", action="store_true")
parser.add_argument("--fake-exit-at-start", action="store_true")
parser.add_argument("--fake-exit-after", type=int, default=None, help="die mid-stream after N tokens")
parser.add_argument("--fake-stall-after", type=int, default=None, help="stop sending after N tokens")
parser.add_argument("--fake-port-in-use-once", default=None, help="fail like a lost port race once")
parser.add_argument("--fake-spawn-grandchild", action="store_true")
parser.add_argument("--fake-log-lines", type=int, default=0)
args, unknown = parser.parse_known_args()


def say(line: str) -> None:
    print(line, flush=True)


say(f"fake runtime pid={os.getpid()} argv={sys.argv[1:]}")
say(f"LD_LIBRARY_PATH={os.environ.get('LD_LIBRARY_PATH', '')}")
say(f"FAKE_ENV={os.environ.get('FAKE_ENV', '')}")
say(f"api key set: {'VLLM_API_KEY' in os.environ}")
for i in range(args.fake_log_lines):
    say(f"log line {i}")
if args.fake_ignore_sigterm:
    signal.signal(signal.SIGTERM, lambda *_: say("ignoring SIGTERM"))
if args.fake_exit_at_start:
    say("error: model file is corrupt")
    sys.exit(2)
if args.fake_port_in_use_once and not os.path.exists(args.fake_port_in_use_once):
    open(args.fake_port_in_use_once, "w").close()
    say(f"error: couldn't bind HTTP server socket, port: {args.port}: Address already in use")
    sys.exit(1)
if args.fake_spawn_grandchild:
    grandchild = subprocess.Popen(["sleep", "300"])
    say(f"grandchild pid={grandchild.pid}")
time.sleep(args.fake_startup_delay)


API_KEY = os.environ.get("VLLM_API_KEY")  # like vLLM: when set, every call must carry it


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _authorised(self) -> bool:
        if API_KEY is None or self.headers.get("Authorization") == f"Bearer {API_KEY}":
            return True
        self._json(401, {"error": {"message": "Unauthorized"}})
        return False

    def log_message(self, fmt: str, *a: object) -> None:
        say("request: " + fmt % a)

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if self.path == "/health":
            self._json(503 if args.fake_never_ready else 200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": args.alias, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        if not self._authorised():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = min(args.fake_tokens, body.get("max_tokens") or args.fake_tokens)
        prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        if not body.get("stream"):
            text = "".join(f"tok{i} " for i in range(n))
            self._json(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # no length: the stream ends when the connection closes
        try:
            for i in range(n):
                if args.fake_stall_after is not None and i == args.fake_stall_after:
                    say("stalling")
                    time.sleep(3600)
                if args.fake_exit_after is not None and i == args.fake_exit_after:
                    say("fatal: simulated crash mid-stream")
                    os._exit(9)
                chunk = {"choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(args.fake_token_delay)
            last = {
                "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": n},
            }
            self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
            say(f"stream finished after {n} tokens")
        except (BrokenPipeError, ConnectionResetError):
            say(f"client disconnected after {i} tokens")
        self.close_connection = True


server = ThreadingHTTPServer((args.host, args.port), Handler)
server.daemon_threads = True
say(f"listening on {args.host}:{args.port}")
threading.Thread(target=server.serve_forever, daemon=True).start()
while True:
    time.sleep(3600)
