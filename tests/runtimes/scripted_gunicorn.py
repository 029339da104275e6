"""gunicorn, exactly as `make run` starts it, with the scripted test backend registered.

    python -m tests.runtimes.scripted_gunicorn -c conf/gunicorn.conf.py wsgi:app

The master validates the settings (conf/gunicorn.conf.py) and forks the worker, so the
backend must be known to the master: it is registered here, before gunicorn starts.
"""

from gunicorn.app.wsgiapp import run

from llmpool.backends import registry
from tests.fakes import ScriptedAdapter

if __name__ == "__main__":
    registry.register(ScriptedAdapter)
    run(prog="gunicorn")
