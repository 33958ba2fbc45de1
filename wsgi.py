"""WSGI entry point for gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app`` (and ``flask --app wsgi``)."""

import sys

from app import create_app
from config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    # One line naming the variable, for gunicorn and every `flask` command alike; not a traceback.
    sys.exit(f"configuration error: {exc}")
