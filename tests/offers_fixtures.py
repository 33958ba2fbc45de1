"""Helpers for offers tests: route partner HTTP calls into a Courier app's reference partner."""

import json

import responses

REFERENCE_BASE = "http://127.0.0.1:8000/partners/reference"


def route_to_app(mock: responses.RequestsMock, app, base: str = REFERENCE_BASE, prefix: str = "/partners/reference",
                 fail: dict | None = None, ping: bool = False):
    """Register callbacks that answer partner calls with the app's real reference endpoints.

    ``fail`` maps a path to a function(body) -> status or None, to inject failures per member.
    """
    client = app.test_client()
    calls = []

    def handler(request):
        path = request.path_url[len(base.split("//", 1)[1].split("/", 1)[1]) + 1:]
        body = json.loads(request.body) if request.body else None
        calls.append((path, body))
        if fail and path in fail:
            status = fail[path](body)
            if status:
                return status, {}, json.dumps({"detail": "injected"})
        if request.method == "GET":
            response = client.get(prefix + path)
        else:
            response = client.post(prefix + path, json=body)
        return response.status_code, {}, response.get_data(as_text=True)

    for path in ("/ml/ats/predict", "/ml/resp/predict", "/offer/assign"):
        mock.add_callback(responses.POST, base + path, callback=handler, content_type="application/json")
    if ping:
        mock.add_callback(responses.GET, base + "/", callback=handler, content_type="application/json")
    return calls


class LivePartner:
    """The reference partner on a real loopback port (the uvicorn keep-alive server, in a thread).

    The batch scorer talks asyncio, which ``responses`` cannot see; this is the real server it
    meets in production, with test hooks: ``calls`` records (path, body) of every call, ``peers``
    the client address of every request, and ``fail`` maps a path to function(body) -> None
    (answer normally), a status (answer it with a small JSON error), or (status, text) to answer
    exactly that body.
    """

    PREFIX = "/partners/reference"

    def __init__(self, fail: dict | None = None) -> None:
        import threading
        import time

        import uvicorn

        from services.offers.reference.server import make_app

        self.fail = dict(fail or {})
        self.calls: list[tuple[str, object]] = []
        self.peers: set = set()

        def intercept(path, body):
            self.calls.append((path, body))
            rule = self.fail.get(path)
            return rule(body) if rule else None

        inner = make_app(self.PREFIX, intercept=intercept, on_connection=lambda client: self.peers.add(tuple(client)))
        self.headers: list[dict[bytes, bytes]] = []  # request headers, one dict per request

        async def app(scope, receive, send):
            if scope["type"] == "http":
                self.headers.append(dict(scope["headers"]))
            await inner(scope, receive, send)

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", access_log=False,
                                lifespan="off", loop="asyncio", http="httptools")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-partner", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.service_url + self.PREFIX

    def config(self, batch: bool = False, **changes):
        """The bundled registry's reference partner, pointed here; batch endpoints only if asked."""
        import dataclasses

        from config import DATA_DIR
        from services.offers.partners.registry import load_registry

        config = load_registry(DATA_DIR / "partners.toml", service_url=self.service_url).get("reference")
        if not batch:
            config = dataclasses.replace(config, batch=None)
        return dataclasses.replace(config, **changes)

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.calls if p == path)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def recorded_results(sessions, run_id: int) -> list[tuple]:
    """A run's results as (member_id, status, ats, resp, offer, error) tuples in member order: what
    two runs must agree on (latencies excluded)."""
    from sqlalchemy import select

    from services.tables import OfferResult

    with sessions() as session:
        rows = session.execute(select(OfferResult.member_id, OfferResult.status, OfferResult.ats_prediction,
                                      OfferResult.resp_prediction, OfferResult.offer, OfferResult.error)
                               .where(OfferResult.run_id == run_id).order_by(OfferResult.member_id)).all()
    return [tuple(r) for r in rows]


def app_on_template_copy(tmp_path_factory, migrated_template, name: str, **config):
    """An app on its own copy of the migrated template database: for module-scoped fixtures that
    share one expensive run between tests."""
    import shutil

    from app import create_app

    folder = tmp_path_factory.mktemp(name)
    shutil.copy(migrated_template, folder / "db.sqlite")
    app = create_app({"DATABASE_URL": f"sqlite:///{folder / 'db.sqlite'}", "ACCESS_LOG": False, "TESTING": True,
                      **config})
    return app, folder


def postgres_in_schema(url: str | None, schema: str) -> str | None:
    """``url`` with a schema of its own first on the search path. Each module that uses the PostgreSQL
    test database has one, so modules running at once (in two xdist workers) never share a table."""
    from sqlalchemy.engine import make_url

    if not url:
        return None
    return make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)


def fresh_postgres(url: str) -> None:
    """Empty the schema ``url`` searches (see :func:`postgres_in_schema`) and migrate it to head."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from services import migrations

    schema = make_url(url).query["options"].split("search_path=", 1)[1]  # type: ignore[union-attr]
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    migrations.upgrade(engine)
    engine.dispose()


def partner_over_http(app) -> None:
    """Make ``app`` call its own reference partner over HTTP (answered through ``responses`` by
    ``route_to_app``), as a partner that is another service is: tests of the HTTP client's behaviour.
    Served by the app itself, it is otherwise answered in process."""
    from capabilities.offers import EXTENSION

    realtime = app.extensions[EXTENSION].realtime
    realtime.own_reference_url = None
    realtime.close()  # clients are built on first use: the next one follows the setting
