"""Fake `exllamav3`: the public names the real package exports at top level."""

from .cache import Cache, CacheLayer_fp16, CacheLayer_quant
from .generator import ComboSampler, DefaultSampler, Generator, Job
from .log import fake_calls
from .model import Config, Model
from .tokenizer import Tokenizer

__all__ = [
    "Cache",
    "CacheLayer_fp16",
    "CacheLayer_quant",
    "ComboSampler",
    "Config",
    "DefaultSampler",
    "Generator",
    "Job",
    "Model",
    "Tokenizer",
    "fake_calls",
]
