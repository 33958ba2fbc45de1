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
    """The reference partner on a real loopback port (the aiohttp keep-alive server, in a thread).

    The batch scorer talks aiohttp, which ``responses`` cannot see; this is the real server it
    meets in production, with two test hooks: ``calls`` records (path, body) of every call, and
    ``fail`` maps a path to function(body) -> None (answer normally), a status (answer it with a
    small JSON error), or (status, text) to answer exactly that body.
    """

    PREFIX = "/partners/reference"

    def __init__(self, fail: dict | None = None) -> None:
        import asyncio
        import threading

        from aiohttp import web

        from services.offers.reference_server import make_app

        self.fail = dict(fail or {})
        self.calls: list[tuple[str, object]] = []
        self.gate = None  # a threading.Event that, when set by a test, every call waits for

        def intercept(path, body):
            self.calls.append((path, body))
            if self.gate is not None:
                self.gate.wait(10)
            rule = self.fail.get(path)
            answer = rule(body) if rule else None
            if isinstance(answer, tuple):
                return web.Response(status=answer[0], text=answer[1], content_type="application/json")
            if answer:
                return web.json_response({"detail": "injected"}, status=answer)
            return None

        self.peers: set = set()  # client (host, port) of every connection that carried a call

        @web.middleware
        async def record_peer(request, handler):
            self.peers.add(request.transport.get_extra_info("peername"))
            return await handler(request)

        app = make_app(self.PREFIX, intercept=intercept)
        app.middlewares.append(record_peer)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        ready = threading.Event()

        async def start():
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]

        def serve():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, name="live-partner", daemon=True)
        self.thread.start()
        ready.wait(10)

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
        import asyncio

        if self.gate is not None:
            self.gate.set()
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
