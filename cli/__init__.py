"""Admin commands (``flask <command>``), each a thin wrapper: parse options, call a service, print.

Commands reach a capability's state through its accessor in ``capabilities/``; ``register_commands``
is the list of them.
"""

from __future__ import annotations

import importlib
from typing import Any

import click
from flask import Flask

# Commands whose modules import what only they use (polars, the partner clients, the Celery wiring,
# numpy for training): listed by name and one-line help, their module imported when one runs.
# ``flask --help`` and every other command skip ~0.1-0.2 s of imports. tests/cli/test_lazy.py
# checks each summary against its command's own.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "run-offers": ("cli.offers:run_offers_command",
                   "Score every member of a transaction CSV on a partner's ML endpoints and..."),
    "partners": ("cli.offers:partners_group", "Partner registry (COURIER_PARTNERS_FILE)."),
    "offers": ("cli.offers:offers_group", "Recorded offer runs."),
    "train-model": ("cli.model:train_model", "Train a delivery-time model on correctly joined orders and..."),
    "evaluate-model": ("cli.model:evaluate_model", "Print held-out MAE and RMSE of a model next to the..."),
}


class LazyCommand(click.Command):
    """Stands in for a command in listings; running it (``--help`` included) imports the real one
    and hands it the arguments, so what runs is exactly the command its module declares."""

    def __init__(self, name: str, target: str, summary: str) -> None:
        super().__init__(name, short_help=summary, add_help_option=False)
        self.target = target

    def real(self) -> click.Command:
        from cli.invocation import wrap_commands

        module, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        wrap_commands(command)
        return command

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        return self.real().make_context(info_name, args, parent=parent, **extra)


def register_commands(app: Flask) -> None:
    """Every command, each with an id on its logs and calls and database errors in one line."""
    from cli.api_keys import api_keys_group
    from cli.db import db_group
    from cli.invocation import wrap_commands
    from cli.seed import seed_venues
    from cli.wait import wait_for_command

    for command in (db_group, api_keys_group, seed_venues, wait_for_command):
        app.cli.add_command(command)
    wrap_commands(app.cli)
    for name, (target, summary) in LAZY_COMMANDS.items():
        app.cli.add_command(LazyCommand(name, target, summary))
