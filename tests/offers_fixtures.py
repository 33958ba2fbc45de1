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
