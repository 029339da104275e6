"""Backend name -> adapter class. The only place that lists backends.

Adapter modules are cheap to import (runtime libraries are imported inside `load`), so
the table holds classes directly.
"""

from __future__ import annotations

from llmpool.backends.base import Adapter
from llmpool.backends.ct2 import Ct2Adapter
from llmpool.backends.exllamav3 import ExLlamaV3Adapter
from llmpool.backends.llama_cpp import LlamaCppAdapter
from llmpool.backends.llama_server import LlamaServerAdapter
from llmpool.backends.openai_remote import OpenAIRemoteAdapter
from llmpool.backends.vllm import VllmAdapter
from llmpool.backends.vllm_serve import VllmServeAdapter

_ADAPTERS: dict[str, type[Adapter]] = {
    cls.backend: cls
    for cls in (
        Ct2Adapter,
        ExLlamaV3Adapter,
        LlamaCppAdapter,
        LlamaServerAdapter,
        OpenAIRemoteAdapter,
        VllmAdapter,
        VllmServeAdapter,
    )
}


def get(name: str) -> type[Adapter] | None:
    return _ADAPTERS.get(name)


def names() -> list[str]:
    return sorted(_ADAPTERS)


def register(cls: type[Adapter]) -> None:
    """Add an adapter class (used by tests for fake runtimes)."""
    _ADAPTERS[cls.backend] = cls


def unregister(name: str) -> None:
    _ADAPTERS.pop(name, None)
