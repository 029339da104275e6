"""Cache and its layer types (real: exllamav3/cache/cache.py, fp16.py, quant.py)."""

from __future__ import annotations

from typing import Any

from .log import record

PAGE_SIZE = 256


class CacheLayer_fp16:  # noqa: N801 (the library's name)
    def __init__(self, max_num_tokens: int) -> None:
        assert max_num_tokens % PAGE_SIZE == 0, f"max_num_tokens must be a multiple of {PAGE_SIZE}."
        self.max_num_tokens = max_num_tokens


class CacheLayer_quant:  # noqa: N801 (the library's name)
    def __init__(self, max_num_tokens: int, k_bits: int, v_bits: int, compand_a: float = 0.0) -> None:
        assert max_num_tokens % PAGE_SIZE == 0, f"max_num_tokens must be a multiple of {PAGE_SIZE}."
        assert (2 <= k_bits <= 8) and (2 <= v_bits <= 8), "quantized cache must be from 2 to 8 bits"
        self.max_num_tokens = max_num_tokens
        self.k_bits = k_bits
        self.v_bits = v_bits


class Cache:
    def __init__(
        self,
        model: Any,
        max_num_tokens: int,
        layer_type: type | None = None,
        max_batch_size: int = 16,
        max_history: int = 0,
        **kwargs: Any,
    ) -> None:
        self.model = model
        self.max_num_tokens = max_num_tokens
        self.layer_type = layer_type or CacheLayer_fp16
        # One layer stands for all of them; extra kwargs (k_bits, v_bits) go to the layer type.
        self.layer = self.layer_type(max_num_tokens, **kwargs)
        self.allocated = False
        record("Cache", max_num_tokens=max_num_tokens, layer_type=self.layer_type, **kwargs)
        model.caches.append(self)  # attach_to_model(): loading the model allocates the cache
