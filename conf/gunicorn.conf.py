"""gunicorn settings: exactly one gevent worker (model state lives in that process).

Bind address comes from LLM_POOL_BIND, else service.host/port of the settings files.
"""

import os
import sys

# conf/worker.py is imported by module path, here and by gunicorn (worker_class).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Patch first, in the master, and selectively (conf/worker.py says why): the settings
# check below imports every backend, and with it requests -> urllib3 -> ssl. Patched
# only later in the worker, urllib3 would keep the unpatched SSLContext and every read
# from an HTTPS upstream would block the whole worker. The worker's patch is then a no-op.
from conf.worker import patch_selectively  # noqa: E402

patch_selectively()

from llmpool.auth import credentials_from  # noqa: E402
from llmpool.config.loader import load_settings, remember_startup_settings  # noqa: E402
from llmpool.errors import ConfigError  # noqa: E402

try:
    _settings = load_settings()
    _service = _settings.service
    credentials_from(_service, os.environ)  # a named secret that is unset: stop here
    remember_startup_settings(_settings)  # the worker (forked from here) starts from these
except ConfigError as exc:  # say what is wrong and stop, instead of a traceback per worker
    sys.exit(f"llm-pool: {exc.message}")

bind = os.environ.get("LLM_POOL_BIND") or f"{_service.host}:{_service.port}"
workers = 1  # never more: each worker would load its own copy of every model
worker_class = "conf.worker.SelectiveGeventWorker"
# Simultaneous connections the one worker accepts (gunicorn's default is 1000). Queued SSE
# clients each hold one while they wait, so this must stay above the models' max_queue
# sum; each costs a greenlet and a socket. Raise the fd limit (LimitNOFILE) to match.
worker_connections = int(os.environ.get("LLM_POOL_WORKER_CONNECTIONS", "4096"))
# Streams can run for minutes; the gevent worker's heartbeat is independent of requests.
timeout = 120
# On SIGTERM running streams get this long to finish before they are cut and the pool
# closes every runtime (worker_exit below).
graceful_timeout = 10
keepalive = 5
# The pool writes its own JSON line per request (llmpool.access); gunicorn's access line would
# repeat it. LLM_POOL_GUNICORN_ACCESSLOG=- turns it back on (e.g. to see requests gunicorn
# itself refused).
accesslog = os.environ.get("LLM_POOL_GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = _service.log_level


def child_exit(server, worker):
    """In the master, as soon as a worker is gone: kill the child process groups a worker that
    died left behind (its record names them; llmpool.crashes). A clean exit left no record."""
    from llmpool.crashes import reap_orphans

    killed = reap_orphans(_service.state_dir, worker.pid)
    if killed:
        server.log.warning("killed process groups %s left by worker %s", killed, worker.pid)


def worker_exit(server, worker):
    """Close every runtime (and, for subprocess backends, every child) before exit."""
    app = getattr(worker, "wsgi", None)
    pool = getattr(app, "extensions", {}).get("llmpool") if app is not None else None
    if pool is not None:
        pool.shutdown()
