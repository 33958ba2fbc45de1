"""Admin commands (``flask <command>``), each a thin wrapper; registered by the capability they
belong to (``init_app`` in ``blueprints/``)."""
