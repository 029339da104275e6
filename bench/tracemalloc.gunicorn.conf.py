"""gunicorn settings for a bench run that traces the worker's allocations (bench/soak.py).

The operators' conf/gunicorn.conf.py unchanged, plus a SIGUSR2 handler in the worker that
collects garbage and writes a tracemalloc snapshot to `$LLM_POOL_BENCH_SNAPSHOT.N`
(N = 1, 2, ...; written under another name and renamed, so a reader never sees half a
file). Tracing itself is on from the start when the worker runs with PYTHONTRACEMALLOC.
Only the bench loads this file; the service never does.
"""

import itertools
import os
import runpy

globals().update(runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "conf", "gunicorn.conf.py")))


def post_worker_init(worker):
    # After gunicorn's own init_signals, which resets SIGUSR2 to its default (terminate).
    import gc
    import signal
    import tracemalloc

    prefix = os.environ["LLM_POOL_BENCH_SNAPSHOT"]
    numbers = itertools.count(1)

    def dump(signum, frame):
        path = f"{prefix}.{next(numbers)}"
        gc.collect()  # what is still referenced, not what a collection would free
        tracemalloc.take_snapshot().dump(path + ".part")
        os.replace(path + ".part", path)

    signal.signal(signal.SIGUSR2, dump)
