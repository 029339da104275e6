"""A fake `exllamav3` package for tests on machines without a CUDA GPU.

ExLlamaV3 only runs on CUDA, so the adapter's unit tests drive this stand-in instead
(STYLE rule 8). `exllamav3/` mirrors the names, signatures and result dicts of the real
library (turboderp-org/exllamav3: `Config.from_directory`, `Model.from_config`,
`Model.load(use_per_device=, tensor_p=, tp_backend=, ...)`, `Cache(model,
max_num_tokens=, layer_type=, k_bits=, v_bits=)`, `Tokenizer.from_config`,
`Generator(...).enqueue/iterate/cancel/clear_queue`, `Job(...)`, `ComboSampler(...)`), with a
deterministic "model": a character-level tokenizer and a reply scripted in the model
directory's `config.json`. Every constructor and load call is appended to
`exllamav3.fake_calls` so tests can check how the adapter wired the settings.

The real run is `tests/unit/test_exllamav3.py::test_real_exllamav3_on_gpu` (GPU-only).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

FAKE_ROOT = Path(__file__).resolve().parent


def make_model_dir(path: Path, reply: str = "Hello from EXL3.", delay_s: float = 0.0) -> Path:
    """A model directory the fake accepts: `config.json` carrying the scripted reply."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["FakeForCausalLM"], "fake_reply": reply, "fake_token_delay_s": delay_s}
    (path / "config.json").write_text(json.dumps(config))
    return path


def _drop_modules() -> dict[str, ModuleType]:
    names = [n for n in sys.modules if n == "exllamav3" or n.startswith("exllamav3.")]
    return {n: sys.modules.pop(n) for n in names}


@contextmanager
def installed() -> Iterator[ModuleType]:
    """Make `import exllamav3` load the fake for the duration; restores what was there."""
    previous = _drop_modules()
    sys.path.insert(0, str(FAKE_ROOT))
    try:
        import exllamav3

        exllamav3.fake_calls.clear()
        yield exllamav3
    finally:
        sys.path.remove(str(FAKE_ROOT))
        _drop_modules()
        sys.modules.update(previous)
