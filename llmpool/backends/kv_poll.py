"""A child runtime's KV-cache use, read from its own Prometheus `/metrics`.

The pool's `llmpool:kv_cache_usage_perc` gauge (what the inference gateway's endpoint
picker scores on) is read at each scrape; asking a child over HTTP there would put a
network round trip, and its failures, inside every scrape. So a poller thread of the
adapter's own asks every `interval_s` and keeps the last answer; a value older than three
intervals (the child stopped answering) is no value. A gauge outside [0, 1] is not taken:
the pool reports no number rather than a made-up one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import requests
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("llmpool.backends")


def kv_usage(text: str, names: Iterable[str]) -> float | None:
    """The fullest value in [0, 1] of the gauges `names` (any labels) in a Prometheus
    text exposition; None when none is there."""
    wanted = set(names)
    values = [
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in wanted and 0.0 <= float(sample.value) <= 1.0
    ]
    return max(values) if values else None


class KvPoller:
    def __init__(
        self,
        url: str,
        names: tuple[str, ...],
        headers: dict[str, str],
        *,
        interval_s: float = 2.0,
        label: str = "",
    ) -> None:
        self.url, self.names, self.headers = url, names, headers
        self.interval_s = interval_s
        self.label = label or url
        self._value: tuple[float, float] | None = None  # (usage, monotonic time it was read)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kv-poll {self.label}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def value(self) -> float | None:
        read = self._value
        if read is None or time.monotonic() - read[1] > 3 * self.interval_s:
            return None
        return read[0]

    def poll(self) -> None:
        """Read the child's gauges once (a failure keeps the last value, which ages out)."""
        try:
            response = requests.get(self.url, headers=self.headers, timeout=self.interval_s)
            response.raise_for_status()
            usage = kv_usage(response.text, self.names)
        except (requests.RequestException, ValueError) as exc:
            log.debug("%s: no KV-cache use from /metrics: %s", self.label, exc)
            return
        self._value = None if usage is None else (usage, time.monotonic())

    def _run(self) -> None:
        while True:
            self.poll()
            if self._stop.wait(self.interval_s):
                return
