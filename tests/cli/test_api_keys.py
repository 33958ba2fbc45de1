"""`flask api-keys create / list / revoke`."""

from __future__ import annotations

import re

from tests.blueprints.test_auth import RUNS, bearer


def test_create_prints_the_key_once_on_stdout_and_the_key_works(runner, anonymous):
    result = runner.invoke(args=["api-keys", "create", "--name", "analytics", "--scope", "runs:read"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert re.fullmatch(r"courier_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    assert "cannot be shown again" in result.stderr
    assert anonymous.get(RUNS, headers=bearer(key)).status_code == 200


def test_list_shows_id_name_and_scopes_but_never_the_key(runner):
    created = runner.invoke(args=["api-keys", "create", "--name", "ops", "--scope", "offers:score",
                                  "--scope", "runs:read"]).stdout.strip()
    listed = runner.invoke(args=["api-keys", "list"])
    key_id, secret = created.split("_")[1], created.split("_", 2)[2]
    assert listed.exit_code == 0
    assert key_id in listed.output and "ops" in listed.output and "offers:score runs:read" in listed.output
    assert "active" in listed.output and secret not in listed.output


def test_revoke_takes_effect_at_once(runner, anonymous):
    key = runner.invoke(args=["api-keys", "create", "--name", "x", "--scope", "runs:read"]).stdout.strip()
    result = runner.invoke(args=["api-keys", "revoke", key.split("_")[1]])
    assert result.exit_code == 0 and "revoked" in result.output
    assert anonymous.get(RUNS, headers=bearer(key)).status_code == 401
    assert "revoked 20" in runner.invoke(args=["api-keys", "list"]).output


def test_revoking_an_unknown_id_is_an_error(runner):
    result = runner.invoke(args=["api-keys", "revoke", "ffffffffffff"])
    assert result.exit_code == 1 and "No API key with id 'ffffffffffff'" in result.output


def test_an_unknown_scope_is_a_usage_error_listing_the_known_ones(runner):
    result = runner.invoke(args=["api-keys", "create", "--name", "x", "--scope", "runs:delete"])
    assert result.exit_code == 2 and "runs:read" in result.output and "offers:score" in result.output
