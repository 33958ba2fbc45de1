"""API keys for tests that build their own app."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from services.auth.api_keys import Scope, create_key


def new_key(app: Flask, *scopes: Scope, name: str = "tests") -> str:
    with app.extensions["courier"].session() as session, session.begin():
        return create_key(session, name, set(scopes or Scope)).key


def keyed_client(app: Flask, *scopes: Scope) -> FlaskClient:
    """A test client presenting a fresh key with ``scopes`` (default: all)."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {new_key(app, *scopes)}"
    return client
