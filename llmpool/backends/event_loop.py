"""A dedicated event-loop thread for runtimes written in asyncio (in-process vLLM).

Under the gevent worker an asyncio loop may not run on the hub or in a greenlet: it gets a
real thread of its own, and the real threads that serve jobs hand it coroutines and block
on real queues for the results (see llmpool.greenbridge).
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Coroutine
from typing import Any

from llmpool import greenbridge


class LoopThread:
    """An asyncio event loop running forever on its own real OS thread.

    `call(coro, timeout)` runs a coroutine there and blocks the calling OS thread for its
    result (re-raising its exception); `submit` only schedules it. Thread-safe.

    The loop is made and closed on its own thread. Its self-pipe is a socket pair, gevent
    sockets under the worker's patch, tied to the hub of the thread that made them: made
    on the caller's thread (a hub threadpool worker, for a load with wait=true), they
    could not be closed once that worker had exited and gevent had destroyed its hub
    ("operation on destroyed loop" at unload or shutdown, and the loop leaked).
    """

    def __init__(self) -> None:
        made: queue.SimpleQueue[asyncio.AbstractEventLoop] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[bool] = queue.SimpleQueue()
        greenbridge.start_thread(self._run, made, name="vllm-loop")
        self.loop = made.get()

    def _run(self, made: queue.SimpleQueue[asyncio.AbstractEventLoop]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        made.put(loop)
        try:
            loop.run_forever()
            loop.close()
        finally:
            self._done.put(True)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

        async def wrapper() -> None:
            try:
                results.put((True, await coro))
            except BaseException as exc:  # handed to the caller, which re-raises it
                results.put((False, exc))

        future = self.submit(wrapper())
        try:
            ok, value = results.get(timeout=timeout)
        except queue.Empty:
            future.cancel()
            raise TimeoutError(f"the engine loop did not answer within {timeout} s") from None
        if not ok:
            raise value
        return value

    def stop(self, timeout: float) -> None:
        """Cancel what still runs there, stop the loop and wait for its thread to close it."""

        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)
            asyncio.get_running_loop().stop()

        self.submit(cancel_the_rest())
        try:
            self._done.get(timeout=timeout)
        except queue.Empty:
            pass  # still running something: its thread closes the loop when it stops
