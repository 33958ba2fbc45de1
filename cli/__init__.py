"""Admin commands (``flask <command>``), each a thin wrapper: parse options, call a service, print.

Commands reach a capability's state through its accessor in ``capabilities/``; ``register_commands``
is the list of them.
"""

from __future__ import annotations

from flask import Flask


def register_commands(app: Flask) -> None:
    """Every command, each with an id on its logs and calls and database errors in one line."""
    from cli.api_keys import api_keys_group
    from cli.db import db_group
    from cli.invocation import wrap_commands
    from cli.model import evaluate_model, train_model
    from cli.offers import offers_group, partners_group, run_offers_command
    from cli.seed import seed_venues
    from cli.wait import wait_for_command

    for command in (db_group, api_keys_group, seed_venues, wait_for_command, train_model, evaluate_model,
                    run_offers_command, partners_group, offers_group):
        app.cli.add_command(command)
    wrap_commands(app.cli)
