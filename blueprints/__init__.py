"""HTTP layer: each blueprint parses and validates, calls one service function, serialises.

Each capability module (estimate, pricing, offers, partner_reference, system) has ``init_app(app)``:
it builds the capability's state as a typed object on ``app.extensions``, registers its blueprint
and its commands. ``app.create_app`` is the list of those calls.
"""
