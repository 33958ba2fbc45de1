"""HTTP layer: each blueprint parses and validates, calls one service function, serialises.

Views reach a capability's state through its accessor in ``capabilities/``; ``register_blueprints``
is the list of the app's blueprints.
"""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    """Every blueprint; the reference partner's only when ``COURIER_REFERENCE_PARTNER_ENABLED``."""
    from blueprints import estimate, offer_runs, offers, partner_reference, pricing, system, web

    for blueprint in (system.bp, estimate.bp, pricing.bp, offers.bp, offer_runs.bp):
        app.register_blueprint(blueprint)
    web.init_app(app)
    if app.config["REFERENCE_PARTNER_ENABLED"]:
        app.register_blueprint(partner_reference.bp, url_prefix=app.config["REFERENCE_PARTNER_PREFIX"].rstrip("/"))
