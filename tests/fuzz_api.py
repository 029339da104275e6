"""`make test`'s API fuzzer: schemathesis against a live gunicorn pool, from /openapi.json.

    .venv/bin/python -m tests.fuzz_api [--max-time 100] [--seed N]

Starts the real server (SmolLM2 in-process, a short context so generated requests stay
quick), then runs every schemathesis check except `positive_data_acceptance`: a few rules
are the model's, not the schema's (the last message must come from the user; `max_tokens`
up to the model's own limit; which overrides a backend allows), so a schema-valid body may
rightly get a 4xx. Everything else fails the run: any 5xx but a 502
`output_schema_violation` (tests/fuzz_checks.py), a status, content type, header or body
the document does not declare, an invalid request that is accepted, a wrong 405.
A fixed seed keeps CI reproducible; pass another to explore. Prints the number of
generated requests, and exits with schemathesis's status.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import SMOLLM2_ID, SMOLLM2_REF
from tests.integration.conftest import ROOT, start_server, stop_server

SEED = 20261201


def fuzz_settings() -> dict[str, object]:
    return {
        "service": {"log_level": "warning"},
        "engine": {
            "decoding": {"max_tokens": 8, "temperature": 0.0},
            "models": {
                SMOLLM2_ID: {
                    "backend": "llama_cpp",
                    "model_path": SMOLLM2_REF,
                    "gguf_n_ctx": 256,
                    "gguf_n_threads": 1,
                    "enabled": True,
                    "max_queue": 4,
                }
            },
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time", type=int, default=100, help="seconds of fuzzing (default 100)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    schemathesis = Path(sys.executable).with_name("schemathesis")
    with tempfile.TemporaryDirectory(prefix="llm-pool-fuzz-") as tmp:
        server = start_server(Path(tmp), fuzz_settings())
        try:
            done = subprocess.run(
                [
                    str(schemathesis),
                    "run",
                    server.url + "/openapi.json",
                    "--checks",
                    "all",
                    "--exclude-checks",
                    # not_a_server_error: tests.fuzz_checks.no_server_error in its place
                    "positive_data_acceptance,not_a_server_error",
                    "--max-time",
                    str(args.max_time),
                    "--request-timeout",
                    "60",
                    "--workers",
                    "1",  # hypothesis' lambda introspection is not thread-safe
                    "--seed",
                    str(args.seed),
                    "--generation-database",
                    "none",
                ],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_checks", "PYTHONPATH": str(ROOT)},
            )
        finally:
            stop_server(server)
            log = server.log()
    print(done.stdout[-20000:])
    print(done.stderr[-5000:], file=sys.stderr)
    if "Traceback" in log:
        print("the server logged a traceback:\n" + log[-5000:], file=sys.stderr)
        return 1
    generated = re.search(r"(\d+) generated", done.stdout)
    print(f"fuzz_api: {generated.group(1) if generated else '?'} requests generated, exit {done.returncode}")
    if generated is None:
        return 1
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
