"""A non-editable install works from anywhere: migrations, data and Alembic configuration ship with it.

The wheel is built from a copy of this checkout (setuptools writes build/ and *.egg-info beside
the sources: not into the developer's tree) and installed into a fresh virtualenv whose
dependencies come from the test virtualenv (a .pth line; no network). Every command then runs
from a folder outside the checkout, so nothing can be read from the source tree by accident.
"""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.live_servers import ROOT, free_port, http_get, wait_until_up


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtualenv with the courier wheel installed (not editable); returns its folder."""
    folder = tmp_path_factory.mktemp("pkg")
    wheels, source = folder / "wheels", folder / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".tox", "build", "dist", "instance", "*.egg-info", "__pycache__", ".*_cache"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(source)], capture_output=True, text=True)
    if build.returncode != 0 and "No module named 'wheel'" in build.stderr + build.stdout:
        pytest.skip("the wheel package is not installed (the dev extra brings it)")
    assert build.returncode == 0, build.stderr
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    *map(str, wheels.glob("courier-*.whl"))], check=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # Dependencies (Flask, SQLAlchemy, ...) from the test virtualenv, after the venv's own packages.
    deps = [p for p in (sysconfig.get_paths()["purelib"], *site.getsitepackages()) if Path(p).is_dir()]
    Path(purelib, "courier-test-deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    return venv


def run(venv: Path, cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_installed_outside_the_checkout_it_migrates_seeds_and_serves(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COURIER_", "PYTHONPATH"))}
    env.update(COURIER_DATABASE_URL=f"sqlite:///{tmp_path / 'courier.db'}", COURIER_LOG_LEVEL="WARNING")

    where = run(installed, elsewhere, env, "-c",
                "import config, wsgi; print(config.PROJECT_ROOT); print(wsgi.__file__)")
    assert where.returncode == 0, where.stderr
    root, module = where.stdout.split()
    assert root == str(installed / "share" / "courier")  # data and migrations from the install
    assert not module.startswith(str(ROOT))  # the code from the install, not this checkout

    upgrade = run(installed, elsewhere, env, "-m", "flask", "--app", "wsgi", "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    seed = run(installed, elsewhere, env, "-m", "flask", "--app", "wsgi", "seed-venues")
    assert seed.returncode == 0, seed.stderr
    data = installed / "share" / "courier" / "data"
    assert f"prep times ({data / 'venue_preparation.csv'}): 100 inserted" in seed.stdout
    assert f"venues ({data / 'venues'}): 5 inserted" in seed.stdout

    port = free_port()
    server = subprocess.Popen(
        [str(installed / "bin" / "python"), "-m", "gunicorn", "-c",
         str(installed / "share" / "courier" / "gunicorn.conf.py"), "wsgi:app"],
        cwd=elsewhere, env={**env, "COURIER_BIND": f"127.0.0.1:{port}", "COURIER_WORKERS": "1",
                            "COURIER_GUNICORN_LOG_LEVEL": "warning",
                            "COURIER_CONTROL_SOCKET": str(tmp_path / "gunicorn.ctl")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(port, server)
        status, body = http_get(port, "/readyz")
        assert status == 200, body
        price_status, _ = http_get(port, "/api/v1/delivery-order-price?venue_slug=home-assignment-venue-helsinki"
                                         "&cart_value=1000&user_lat=60.17094&user_lon=24.93087")
        assert price_status == 200  # the seeded venue, priced by the installed code
    finally:
        server.terminate()
        server.wait(30)


def test_installed_without_a_database_url_the_data_lives_outside_the_virtualenv(installed, tmp_path):
    """Flask's instance folder of an installed app is <venv>/var/app-instance: rebuilding the
    virtualenv deleted the database. The default is the user's data folder instead."""
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("COURIER_", "PYTHONPATH", "XDG_DATA_HOME"))}
    env.update(HOME=str(home), COURIER_LOG_LEVEL="WARNING")
    upgrade = run(installed, tmp_path, env, "-m", "flask", "--app", "wsgi", "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert (home / ".local" / "share" / "courier" / "courier.db").is_file()
    assert not (installed / "var").exists()
    moved = run(installed, tmp_path, {**env, "XDG_DATA_HOME": str(tmp_path / "xdg")}, "-c",
                "import wsgi; print(wsgi.app.config['DATABASE_URL'])")
    assert moved.stdout.strip() == f"sqlite:///{tmp_path / 'xdg' / 'courier' / 'courier.db'}"
