"""Tokenizer (real: exllamav3/tokenizer/tokenizer.py), character level here.

The real `encode` returns a torch.Tensor of shape (1, n); torch is not installed on
machines without a GPU, so `IdTensor` stands in with the parts a caller uses.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from .log import record

PAD, BOS, EOS = 0, 1, 2
SPECIAL = {"<|im_start|>": 3, "<|im_end|>": 4}  # ChatML markup, one id each
OFFSET = 5
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL) + ")")


class IdTensor:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.shape = (1, len(ids))
        self.device = SimpleNamespace(type="cpu")

    def tolist(self) -> list[list[int]]:
        return [list(self.ids)]


class Tokenizer:
    pad_token_id = PAD
    bos_token_id = BOS
    eos_token_id = EOS
    eos_token = "</s>"

    def __init__(self, config: Any) -> None:
        self.config = config

    @staticmethod
    def from_config(config: Any) -> Tokenizer:
        return Tokenizer(config)

    def encode(
        self,
        text: str,
        add_bos: bool = False,
        add_eos: bool = False,
        encode_special_tokens: bool = False,
        return_offsets: bool = False,
        embeddings: list[Any] | None = None,
    ) -> IdTensor:
        """Special markup becomes one id only with encode_special_tokens (as the real one)."""
        record("Tokenizer.encode", add_bos=add_bos, encode_special_tokens=encode_special_tokens)
        ids: list[int] = []
        for part in _SPECIAL_RE.split(text) if encode_special_tokens else [text]:
            ids += [SPECIAL[part]] if part in SPECIAL else [ord(c) + OFFSET for c in part]
        if add_bos:
            ids.insert(0, BOS)
        if add_eos:
            ids.append(EOS)
        return IdTensor(ids)

    def piece(self, token_id: int) -> str:
        names = {v: k for k, v in SPECIAL.items()}
        return names.get(token_id, "") if token_id < OFFSET else chr(token_id - OFFSET)

    def decode(self, ids: IdTensor, decode_special_tokens: bool = False) -> list[str]:
        return ["".join(self.piece(t) for t in row) for row in ids.tolist()]

    def single_id(self, token: str) -> int:
        return {"<pad>": PAD, "<s>": BOS, "</s>": EOS, **SPECIAL}.get(token, ord(token[0]) + OFFSET)
