"""WSGI entry point for gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app`` (and ``flask --app wsgi``).

Also the Celery app of distributed offers runs: ``celery -A wsgi:celery_app worker`` (built on first
access, so serving and the other commands never import Celery).
"""

import sys

from app import create_app
from config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    # One line naming the variable, for gunicorn and every `flask` command alike; not a traceback.
    sys.exit(f"configuration error: {exc}")


def __getattr__(name: str):
    if name == "celery_app":
        from capabilities.offers import celery_app

        return celery_app(app)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
