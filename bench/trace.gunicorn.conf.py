"""gunicorn settings for bench/request_trace.py: the operators' conf/gunicorn.conf.py, plus
timestamps at the steps of each request in the worker.

At `post_worker_init` a few functions of gunicorn, Flask, webargs and the pool are wrapped
so that each call notes `time.perf_counter()` (CLOCK_MONOTONIC, the same clock in every
process of the machine); when gunicorn closes a response, the request's marks go to
`$LLM_POOL_BENCH_TRACE` as one JSON line: the monotonic time of the accept and each mark
in ms after it. Only the bench loads this file; the service never does.
"""

import json
import os
import runpy
import time

globals().update(runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "conf", "gunicorn.conf.py")))

_marks = []


def _wrap(owner, attr, name, end=False):
    original = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        _marks.append((name, time.perf_counter()))
        try:
            return original(*args, **kwargs)
        finally:
            if end:
                _marks.append((name + " end", time.perf_counter()))

    setattr(owner, attr, wrapper)


def post_worker_init(worker):
    import flask
    import webargs.core
    from gunicorn.http import wsgi
    from gunicorn.workers import base_async

    from llmpool.backends import http1
    from llmpool.executor import Executor
    from llmpool.serving.pipeline import Pipeline

    handle = base_async.AsyncWorker.handle

    def accepted(self, listener, client, addr):  # a new connection (one request each here)
        _marks[:] = [("accepted", time.perf_counter())]
        return handle(self, listener, client, addr)

    base_async.AsyncWorker.handle = accepted
    _wrap(base_async.AsyncWorker, "handle_request", "request parsed")
    _wrap(flask.Flask, "preprocess_request", "before_request hooks", end=True)
    _wrap(webargs.core.Parser, "parse", "body load", end=True)
    _wrap(Pipeline, "submit", "submit", end=True)
    _wrap(Executor, "_run", "job starts")
    _wrap(http1.Http1Origin, "request", "upstream request", end=True)
    _wrap(wsgi.Response, "write", "write")
    close = wsgi.Response.close
    path = os.environ["LLM_POOL_BENCH_TRACE"]

    def closed(self):
        close(self)
        if _marks and _marks[0][0] == "accepted":
            start = _marks[0][1]
            line = {"accepted": start, "marks": [[name, round((t - start) * 1000, 3)] for name, t in _marks]}
            with open(path, "a") as out:
                out.write(json.dumps(line) + "\n")

    wsgi.Response.close = closed
