# Courier's container image: one image for every role (web, migrate job, Celery worker, reference
# partner, venue API stand-in), and a `test` target that runs the unit tests in the build.
#
#   docker build -t courier .                  # the runtime image (the last stage)
#   docker build --target test .               # runs the suite; the build fails when a test fails
#
# Where no registry is reachable (this project's CI machines), build the base from Debian packages and
# pass it in: --build-arg BASE=localhost/debian-python:bookworm (deploy/stack_test.sh does it all).
# The compose file (compose.yaml) runs the whole stack from this image; README "Run with containers".
ARG BASE=python:3.11-slim-bookworm

# --- dependencies: a virtualenv with the pinned runtime dependencies ---------------------------------
FROM ${BASE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/courier
RUN python3 -m venv /opt/venv
# Only the dependency declarations first: a code change then reuses this layer (pip takes minutes).
COPY setup.cfg constraints.txt ./
# setup.cfg's install_requires plus the postgres and distributed extras (psycopg, Celery with Redis),
# at the versions pinned in constraints.txt, as `make run` installs them.
RUN python3 -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); \
extras = c['options.extras_require']; \
print(c['options']['install_requires'] + extras['postgres'] + extras['distributed'])" > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --quiet -c constraints.txt -r /tmp/requirements.txt

# --- test: the unit tests, run by the build (with the dev and train extras, as `make test`) -----------
# PostgreSQL, Redis and nginx are not in the image: their tests skip with their usual reason.
FROM deps AS test
RUN python3 -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); \
print(c['options.extras_require']['dev'] + c['options.extras_require']['train'])" > /tmp/requirements-dev.txt \
 && /opt/venv/bin/pip install --quiet -c constraints.txt -r /tmp/requirements-dev.txt
COPY . .
ENV PATH=/opt/venv/bin:$PATH FLASK_APP=wsgi
RUN ruff check . && python -m pytest -n auto --dist loadfile -q -p no:cacheprovider

# --- slim: the same virtualenv without what running it never reads ----------------------------------
# Measured on the venv above: 471 MB -> 390 MB by stripping symbols from the packages' own extension
# modules (polars' runtime alone 170 -> 137 MB); the auditwheel-bundled libraries in *.libs/ are left
# alone (stripping those can corrupt them, and saves ~2 MB). Also dropped: pip (14 MB) and the
# packages' own test suites (24 MB). The runtime image's stack test exercises every capability on it.
FROM deps AS slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends binutils >/dev/null \
 && find /opt/venv -name '*.so' -type f -not -path '*.libs/*' -exec strip --strip-unneeded {} + \
 && find /opt/venv/lib/python3.11/site-packages -type d -name tests -prune -exec rm -rf {} + \
 && rm -rf /opt/venv/lib/python3.11/site-packages/pip /opt/venv/lib/python3.11/site-packages/pip-* /opt/venv/bin/pip*

# --- runtime ---------------------------------------------------------------------------------------
FROM ${BASE} AS runtime
# No compiler, no build tools, no pip: the base plus the venv.
COPY --from=slim /opt/venv /opt/venv
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/courier --create-home courier
WORKDIR /opt/courier
# The code, its data (models, venue snapshots, the sample, the partner registry) and migrations, laid
# out as in a checkout (config.PROJECT_ROOT is this folder), plus the venue API stand-in for the demo.
COPY app.py wsgi.py config.py alembic.ini gunicorn.conf.py ./
COPY blueprints/ blueprints/
COPY capabilities/ capabilities/
COPY services/ services/
COPY cli/ cli/
COPY migrations/ migrations/
COPY data/ data/
COPY bench/__init__.py bench/venue_standin.py bench/
COPY deploy/docker-entrypoint.sh /usr/local/bin/courier-entrypoint
# Bytecode compiled once here, as root: the courier user cannot write into /opt, and every container
# would otherwise compile on each start.
# instance/ is Flask's instance folder: the SQLite database when no COURIER_DATABASE_URL is given
# (mount a volume there to keep it; compose uses PostgreSQL). Not an ENV default here: a setting
# given as COURIER_<NAME>_FILE must not also be set, and compose gives the database URL as a secret.
# /var/lib/courier/uploads: where compose mounts the uploads volume (web writes run inputs, the
# coordinator reads them); made here so a new volume takes the courier user as its owner.
RUN /opt/venv/bin/python -m compileall -q /opt/courier \
 && mkdir -p /opt/courier/instance /var/lib/courier/uploads \
 && chown courier:courier /opt/courier/instance /var/lib/courier/uploads
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/courier \
    PYTHONUNBUFFERED=1 \
    FLASK_APP=wsgi \
    COURIER_BIND=0.0.0.0:8000 \
    COURIER_CONTROL_SOCKET=/tmp/gunicorn-courier.ctl
USER courier
EXPOSE 8000
# gunicorn drains on SIGTERM: each worker finishes its request (COURIER_GRACEFUL_TIMEOUT, 30 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["courier-entrypoint"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
