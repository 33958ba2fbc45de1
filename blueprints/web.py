"""The web view: offer runs for people in a browser. Server-rendered (Flask's Jinja templates), no
JavaScript, nothing from another origin, a strict Content-Security-Policy.

Signing in: a person pastes an API key once; the server checks it and keeps, in Flask's signed
session cookie (HttpOnly, SameSite=Strict), the key's id and a CSRF token, never the key. Every
page re-reads the key's row, so a revoked key (``flask api-keys revoke``) ends its sessions at
the next click and scopes are always the key's current ones. Every form carries the session's CSRF
token and is refused without it.

Pages call the same service functions as the REST API (``blueprints.offer_runs.start_run``,
``Submissions.cancel``/``resume``, ``queries.run_view``), so runs started here are the same records,
reports and exports. The header-key API is unchanged; this blueprint is public for
``auth.protect`` because it checks its own sessions.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException

from blueprints.common import load_or_400
from blueprints.errors import courier_error_response
from blueprints.hooks import db_session
from blueprints.limits import RateLimited, limited
from blueprints.offer_runs import RunRequestSchema, allow_upload_body, cancel_run, run_request, start_run
from blueprints.offers import export_response, report_response
from capabilities.offers import offers_capability
from services.auth.api_keys import KeyInfo, Scope, live_key, verify_key
from services.errors import CourierError, Unauthenticated
from services.offers.reports import queries as run_service

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/web/static")

# Everything the pages use comes from this origin; no script runs; forms post only here; no framing.
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
PAGE_SIZE = 25
ACTIVE = ("queued", "running")


class NotSignedIn(Exception):
    """The page needs a signed-in key."""


class MissingScope(Exception):
    def __init__(self, scope: Scope) -> None:
        super().__init__(scope.value)
        self.scope = scope


@bp.before_request
def _signed_in_key() -> None:
    """The session's key, re-checked against the database (revoked: signed out)."""
    g.web_key = None
    key_id = session.get("key_id")
    if key_id is None:
        return
    expires = session.get("expires", 0)
    info = live_key(db_session(), key_id) if expires > datetime.now(UTC).timestamp() else None
    if info is None:
        session.clear()
        return
    g.web_key = info
    g.api_key_id = info.id  # the access log, the rate limits and the runs it starts name it


def _need(scope: Scope) -> KeyInfo:
    key: KeyInfo | None = g.get("web_key")
    if key is None:
        raise NotSignedIn()
    if scope.value not in key.scopes:
        raise MissingScope(scope)
    return key


def csrf_token() -> str:
    token = session.get("csrf")
    if token is None:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _check_csrf() -> None:
    sent = request.form.get("csrf_token", "")
    if not hmac.compare_digest(sent.encode(), csrf_token().encode()):
        raise CourierError("The form expired or did not come from this site; reload the page and try again.",
                           code="csrf_failed", status=400)


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(render_template(f"web/{template}", key=g.get("web_key"), csrf_token=csrf_token(),
                                        **context), status=status, mimetype="text/html")
    return response


def _safe_next(target: str | None) -> str:
    """Only a path on this site (never ``//evil`` or ``https://evil``): no open redirect after sign-in."""
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return url_for("web.runs")


@bp.get("/sign-in")
def sign_in_form() -> Response:
    return _page("sign_in.html", next=_safe_next(request.args.get("next")))


@bp.post("/sign-in")
def sign_in() -> Response:
    _check_csrf()
    target = _safe_next(request.form.get("next"))
    info = verify_key(db_session(), request.form.get("api_key", "").strip())
    if info is None:
        return _page("sign_in.html", status=401, next=target, error="That key is not valid, or it was revoked.")
    session.clear()  # a new session (and CSRF token) at each sign-in: nothing carried over
    session.permanent = True
    hours = current_app.config["WEB_SESSION_HOURS"]
    session.update(key_id=info.id, expires=(datetime.now(UTC) + timedelta(hours=hours)).timestamp(),
                   csrf=secrets.token_urlsafe(32))
    return redirect(target, code=303)  # type: ignore[return-value]


@bp.post("/sign-out")
def sign_out() -> Response:
    _check_csrf()
    session.clear()
    return redirect(url_for("web.sign_in_form"), code=303)  # type: ignore[return-value]


@bp.get("/runs")
def runs() -> Response:
    _need(Scope.RUNS_READ)
    items, cursor = run_service.list_runs(db_session(), PAGE_SIZE, request.args.get("cursor") or None)
    return _page("runs.html", runs=items, next_cursor=cursor, refresh=any(r["status"] in ACTIVE for r in items))


@bp.get("/runs/new")
def new_run() -> Response:
    _need(Scope.RUNS_WRITE)
    return _new_run_page()


@bp.post("/runs")
@limited("RATE_LIMIT_RUN_SUBMISSIONS")  # the same budget as the REST calls; the key is known (_signed_in_key)
def start() -> Response:
    _need(Scope.RUNS_WRITE)
    try:
        allow_upload_body()  # before the CSRF check reads the form, which parses the whole upload
        _check_csrf()
        upload = request.files.get("file")
        form = {k: v for k, v in request.form.items() if k in RunRequestSchema().fields and v != ""}
        if upload is None or not upload.filename:
            raise CourierError("Choose a member CSV to upload.", code="invalid_request", status=400)
        options = load_or_400(RunRequestSchema(), form, "Invalid run options.")
        record, _ = start_run(upload.stream, upload.filename, run_request(options, None))
    except CourierError as exc:
        return _new_run_page(status=exc.status, error=exc.message, problems=exc.details)
    return redirect(url_for("web.run", run_id=record["id"]), code=303)  # type: ignore[return-value]


def _new_run_page(status: int = 200, **context: Any) -> Response:
    """The upload form (again, with what was wrong, after a refused upload)."""
    return _page("new_run.html", status=status, partners=_partner_names(),
                 today=datetime.now(UTC).date().isoformat(), **context)


def _partner_names() -> list[str]:
    from services.offers.partners.registry import load_registry

    cfg = current_app.config
    try:
        return sorted(load_registry(cfg["PARTNERS_FILE"], cfg["SERVICE_URL"]).partners)
    except Exception:  # noqa: BLE001 - the form still works with the default partner
        return [cfg["OFFERS_DEFAULT_PARTNER"]]


@bp.get("/runs/<int:run_id>")
def run(run_id: int) -> Response:
    _need(Scope.RUNS_READ)
    record = run_service.run_view(db_session(), run_id)
    return _page("run.html", run=record, refresh=record["status"] in ACTIVE,
                 can_write=Scope.RUNS_WRITE.value in g.web_key.scopes)


@bp.post("/runs/<int:run_id>/cancel")
@limited("RATE_LIMIT_RUN_SUBMISSIONS")  # the same budget as the REST calls; the key is known (_signed_in_key)
def cancel(run_id: int) -> Response:
    _need(Scope.RUNS_WRITE)
    _check_csrf()
    cancel_run(run_id)
    return redirect(url_for("web.run", run_id=run_id), code=303)  # type: ignore[return-value]


@bp.post("/runs/<int:run_id>/resume")
@limited("RATE_LIMIT_RUN_SUBMISSIONS")  # the same budget as the REST calls; the key is known (_signed_in_key)
def resume(run_id: int) -> Response:
    _need(Scope.RUNS_WRITE)
    _check_csrf()
    offers_capability().submissions.resume(run_id)
    return redirect(url_for("web.run", run_id=run_id), code=303)  # type: ignore[return-value]


@bp.get("/runs/<int:run_id>/report")
def report(run_id: int) -> Response:
    _need(Scope.RUNS_READ)
    return report_response(run_id)


@bp.get("/runs/<int:run_id>/export.csv")
def export(run_id: int) -> Response:
    _need(Scope.RUNS_READ)
    return export_response(run_id)


@bp.errorhandler(NotSignedIn)
def _to_sign_in(_exc: NotSignedIn) -> Response:
    target = request.full_path.rstrip("?") if request.method == "GET" else url_for("web.runs")
    return redirect(url_for("web.sign_in_form", next=target))  # type: ignore[return-value]


@bp.errorhandler(MissingScope)
def _missing_scope(exc: MissingScope) -> Response:
    return _page("error.html", status=403, title="Not allowed",
                 message=f"The key you signed in with lacks the scope {exc.scope.value}. Sign in with a key that "
                         "has it (`flask api-keys create --scope ...`).")


@bp.errorhandler(CourierError)
def _courier_error(exc: CourierError) -> Response:
    return _page("error.html", status=exc.status, title="That did not work", message=exc.message)


@bp.errorhandler(RateLimited)
def _too_many(exc: RateLimited) -> Response:
    limit, retry_after = exc.limit, exc.retry_after_s
    response = _page("error.html", status=429, title="Too many requests",
                     message=f"This key started, cancelled or resumed runs too often ({limit}). Try again in "
                             f"{retry_after} s.")
    response.headers["Retry-After"] = str(retry_after)
    return response


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return _page("error.html", status=exc.code or 500, title=exc.name, message=exc.description or "")


@bp.after_request
def _headers(response: Response) -> Response:
    if "Content-Security-Policy" not in response.headers:  # the report page sets its own (inline charts)
        response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def init_app(app: Flask) -> None:
    """Session cookies: signed with COURIER_SECRET_KEY (else a key file beside the database), HttpOnly,
    SameSite=Strict, Secure when COURIER_WEB_COOKIE_SECURE, lasting COURIER_WEB_SESSION_HOURS."""
    cfg = app.config
    cfg.update(SESSION_COOKIE_NAME="courier_session", SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
               SESSION_COOKIE_SECURE=cfg["WEB_COOKIE_SECURE"],
               PERMANENT_SESSION_LIFETIME=timedelta(hours=cfg["WEB_SESSION_HOURS"]))
    app.session_interface = WebSessions()
    app.register_blueprint(bp)
    app.register_error_handler(Unauthenticated, _page_for_a_browser)


WEB_PATHS = ("/sign-in", "/sign-out", "/runs", "/web/")

# API addresses people keep links to, and their pages here. Opened in a browser without a key, they
# lead to the page (which asks for a sign-in first) instead of a 401 JSON; a client that sends a key,
# or does not ask for HTML first (curl: */*), gets the API's answer as before.
API_PAGES = {"offers.run_report": "web.report", "offers.run_export": "web.export", "offers.run_detail": "web.run"}


def _page_for_a_browser(exc: Unauthenticated) -> Response:
    page = API_PAGES.get(request.endpoint or "")
    if (page is not None and request.method == "GET" and "Authorization" not in request.headers
            and request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"):
        return redirect(url_for(page, **(request.view_args or {})), code=303)  # type: ignore[return-value]
    return courier_error_response(exc)


class WebSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions for the web view's pages only; every other request (the API)
    gets the null session without building a signer or reading a cookie. The signing key is
    COURIER_SECRET_KEY, else read (or made) on the first page that needs it, not when the app is
    built: ``flask --help`` writes no file."""

    def open_session(self, app: Flask, request: Any) -> Any:
        path = request.path
        if not path.startswith(WEB_PATHS):
            return self.make_null_session(app)
        if not app.secret_key:
            from config import default_database_folder
            from services.auth.session_secret import load_or_create

            app.secret_key = app.config["SECRET_KEY"] or load_or_create(default_database_folder() / "secret_key")
        return super().open_session(app, request)
