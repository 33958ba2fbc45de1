"""Commands listed by name and summary, imported when they run (`cli.LAZY_COMMANDS`)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from cli import LAZY_COMMANDS


@pytest.mark.parametrize("name", LAZY_COMMANDS)
def test_each_listed_summary_is_how_its_commands_own_help_begins(name):
    target, summary = LAZY_COMMANDS[name]
    module, _, attribute = target.partition(":")
    command = getattr(importlib.import_module(module), attribute)
    assert command.name == name
    assert " ".join(command.help.split()).startswith(summary.removesuffix("...")), (summary, command.help)


def test_listing_the_commands_imports_none_of_what_they_use():
    code = ("import sys\nfrom app import create_app\napp = create_app()\n"
            "result = app.test_cli_runner().invoke(args=['--help'])\n"
            "assert 'run-offers' in result.output, result.output\n"
            "print(sorted(m for m in ('polars', 'celery', 'cli.offers', 'cli.model', 'numpy', 'alembic', 'geopy')"
            " if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_listed_command_runs_as_its_module_declares_it(runner):
    result = runner.invoke(args=["offers", "report", "--help"])
    assert result.exit_code == 0 and "offers report [OPTIONS] RUN_ID" in result.output
