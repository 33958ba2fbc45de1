"""Admin commands, registered on the Flask app (``flask <command>``); each is a thin wrapper."""

from __future__ import annotations

from flask import Flask


def register_cli(app: Flask) -> None:
    from cli.api_keys import api_keys_group
    from cli.db import db_group
    from cli.model import evaluate_model, train_model
    from cli.offers import offers_group, partners_group, run_offers_command
    from cli.seed import seed_venues

    app.cli.add_command(db_group)
    app.cli.add_command(api_keys_group)
    app.cli.add_command(seed_venues)
    app.cli.add_command(train_model)
    app.cli.add_command(evaluate_model)
    app.cli.add_command(run_offers_command)
    app.cli.add_command(partners_group)
    app.cli.add_command(offers_group)
