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

        from services.offers.reference_server import make_app

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
        from services.offers.partners import load_registry

        config = load_registry(DATA_DIR / "partners.toml", service_url=self.service_url).get("reference")
        if not batch:
            config = dataclasses.replace(config, batch=None)
        return dataclasses.replace(config, **changes)

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.calls if p == path)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
