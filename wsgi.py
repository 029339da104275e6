"""WSGI entry point: `gunicorn -c conf/gunicorn.conf.py wsgi:app`."""

from blueprints import create_app

# The one worker: a death inside a runtime is recorded, and explained by the next worker.
app = create_app(record_crashes=True)
