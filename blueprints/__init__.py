"""HTTP layer: each blueprint parses and validates, calls one service function, serialises."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from blueprints import estimate, system

    app.register_blueprint(system.bp)
    app.register_blueprint(estimate.bp)
