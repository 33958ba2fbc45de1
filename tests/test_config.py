"""Configuration: defaults, then COURIER_* environment, then the factory argument."""

from pathlib import Path

from app import create_app
from config import DEFAULTS, SETTINGS


def test_defaults_apply_when_nothing_overrides(db_url, monkeypatch):
    monkeypatch.delenv("COURIER_VENUE_STATIC_TTL_S", raising=False)
    app = create_app({"DATABASE_URL": db_url})
    assert app.config["VENUE_STATIC_TTL_S"] == DEFAULTS["VENUE_STATIC_TTL_S"] == 3600


def test_environment_overrides_defaults_and_is_parsed_as_json(db_url, monkeypatch):
    monkeypatch.setenv("COURIER_VENUE_STATIC_TTL_S", "42")
    monkeypatch.setenv("COURIER_VENUE_API_URL", "")
    app = create_app({"DATABASE_URL": db_url})
    assert app.config["VENUE_STATIC_TTL_S"] == 42
    assert app.config["VENUE_API_URL"] == ""


def test_factory_argument_overrides_environment(db_url, monkeypatch):
    monkeypatch.setenv("COURIER_VENUE_STATIC_TTL_S", "42")
    app = create_app({"DATABASE_URL": db_url, "VENUE_STATIC_TTL_S": 7})
    assert app.config["VENUE_STATIC_TTL_S"] == 7


def test_database_url_from_environment(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("COURIER_DATABASE_URL", url)
    app = create_app()
    assert app.config["DATABASE_URL"] == url
    assert str(app.extensions["courier"].engine.url) == url


def test_default_database_is_sqlite_in_instance_folder(monkeypatch):
    monkeypatch.delenv("COURIER_DATABASE_URL", raising=False)
    app = create_app()
    assert app.config["DATABASE_URL"] == "sqlite:///" + str(Path(app.instance_path) / "courier.db")


def test_every_setting_is_documented_in_the_readme_with_its_default():
    import json

    from config import PROJECT_ROOT

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [s.key for s in SETTINGS if f"`COURIER_{s.key}`" not in readme]
    assert missing == []
    for s in SETTINGS:
        if s.default is None:
            continue
        default = json.dumps(s.default) if isinstance(s.default, bool) else str(s.default)
        default = default.replace(str(PROJECT_ROOT) + "/", "")
        assert f"| `COURIER_{s.key}` | `{default}` |" in readme, s.key
