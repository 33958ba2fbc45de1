"""Admin commands, registered on the Flask app (``flask <command>``); each is a thin wrapper."""

from __future__ import annotations

from flask import Flask


def register_cli(app: Flask) -> None:
    from cli.db import db_group

    app.cli.add_command(db_group)
