"""HTTP layer: each blueprint parses and validates, calls one service function, serialises."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from blueprints import estimate, offers, partner_reference, pricing, system

    app.register_blueprint(system.bp)
    app.register_blueprint(estimate.bp)
    app.register_blueprint(pricing.bp)
    app.register_blueprint(offers.bp)
    if app.config["REFERENCE_PARTNER_ENABLED"]:
        app.register_blueprint(partner_reference.bp, url_prefix=app.config["REFERENCE_PARTNER_PREFIX"].rstrip("/"))
