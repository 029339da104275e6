"""The in-process `vllm` tier: runs only in the vLLM venv (`make test` does that).

vLLM is not installed in the project's main venv, so the main run ignores this folder
(setup.cfg addopts); here its absence is a loud failure, not a skip.
"""

from __future__ import annotations

import os

# The same offline, CPU-only defaults as tests/runtimes/vllm-serve; set before vLLM is
# imported (it reads most of them at import). The caller's environment wins.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}.items():
    os.environ.setdefault(_key, _value)

try:
    import vllm  # noqa: F401
except ImportError as exc:  # pragma: no cover - the wrong interpreter
    raise RuntimeError(
        "tests/vllm_inprocess needs vLLM: run it with the vLLM venv's python (make test)"
    ) from exc
