"""Config and Model (real: exllamav3/model/config.py, model.py)."""

from __future__ import annotations

import json
import os
from typing import Any

from .log import record


class Config:
    def __init__(self, directory: str, data: dict[str, Any]) -> None:
        self.directory = directory
        self.reply: str = data.get("fake_reply", "Hello from EXL3.")
        self.token_delay_s: float = float(data.get("fake_token_delay_s", 0.0))

    @staticmethod
    def from_directory(directory: str, **kwargs: Any) -> Config:
        path = os.path.join(directory, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No config.json in {directory}")
        with open(path) as f:
            data = json.load(f)
        record("Config.from_directory", directory=directory, **kwargs)
        return Config(directory, data)


class Model:
    def __init__(self, config: Config, component: str) -> None:
        self.config = config
        self.component = component
        self.caches: list[Any] = []
        self.loaded = False

    @staticmethod
    def from_config(config: Config, component: str = "text", **kwargs: Any) -> Model:
        record("Model.from_config", component=component, **kwargs)
        return Model(config, component)

    def load(
        self,
        device: Any = None,
        tp_output_device: Any = None,
        reserve_per_device: list[float] | float | None = None,
        use_per_device: list[float] | float | None = None,
        tensor_p: bool = False,
        progressbar: bool = False,
        max_chunk_size: int = 2048,
        max_output_size: int = 32,
        max_output_factor: int = 1,
        callback: Any = None,
        generator: bool = True,
        tp_dev_limits: dict[str, int] | None = None,
        tp_backend: str = "native",
        verbose: bool = False,
        max_batch_size: int = 1,
        tp_options: dict[str, Any] | None = None,
        autosplit_no_forward: bool = False,
    ) -> None:
        """Real signature of load_gen(); attached caches get their tensors here."""
        assert tp_backend in ("native", "nccl"), f"Unknown TP backend: {tp_backend}"
        record(
            "Model.load",
            device=device,
            reserve_per_device=reserve_per_device,
            use_per_device=use_per_device,
            tensor_p=tensor_p,
            tp_backend=tp_backend,
            progressbar=progressbar,
        )
        self.loaded = True
        for cache in self.caches:
            cache.allocated = True

    def unload(self) -> None:
        """Unloading also destroys the tensors of every attached cache (as the real one)."""
        record("Model.unload")
        self.loaded = False
        for cache in self.caches:
            cache.allocated = False
