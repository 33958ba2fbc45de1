"""What each capability holds for the life of an app, and the one typed accessor to reach it.

Like flaskr's ``db.py``: a capability module builds its state from the app's validated settings in
``init_app(app)`` (a typed object on ``app.extensions``) and gives views and commands an accessor
(``estimate_capability()``, ``runtime()``). It registers no blueprint and no command: ``app.create_app``
does that with ``blueprints.register_blueprints`` and ``cli.register_commands``.

Imports go one way only (import-linter contracts in ``setup.cfg``, checked by ``make test``)::

    app, wsgi  ->  blueprints, cli  ->  capabilities  ->  services  ->  config
"""
