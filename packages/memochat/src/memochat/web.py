"""The memo browser's JSON API (``/api/``), the page at ``/`` and the server-wide guard (token, headers).

Why here and not in a front-end project: the page is three static files (``static/``) that call
this API and the streaming ``/v1/chat/completions`` that API clients use, so one ``memochat serve``
process serves everything with no build step. Every change goes through the bot's
:class:`~memochat.store.MemoStore` (one transaction each, the user's memo version bumped), so API
clients see it on their next turn.

Errors are one line in the OpenAI shape ``{"error": {"message", "type"}}``: unknown users, sessions
and memos give 404, bad bodies or parameters 422, a missing or wrong token 401; nothing else in a
response ever carries a traceback.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from memochat.pipeline import MemoChat
from memochat.store import NotFound
from slimkit.errors import BadInputError

STATIC = Path(__file__).parent / "static"
#: Path prefixes that carry data and so need the token when one is set; ``/`` and ``/static/`` stay public.
PROTECTED = ("/api", "/v1")
MAX_NAME = 200
DEFAULT_LIMIT, MAX_LIMIT = 500, 5000
#: The page builds its DOM with textContent only; the policy forbids inline scripts as a second line.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Host names a loopback-only server answers to (without a token): a DNS-rebinding page arrives with its own name.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ApiError(Exception):
    """A request the API refuses: its status code and one-line message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def api_error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    """The one-line error body every route answers with."""
    line = " ".join(str(message).split()) or "error"
    return JSONResponse(status_code=status, content={"error": {"message": line, "type": kind}})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """``Host`` header without its port (``[::1]:8000`` -> ``::1``)."""
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


# --------------------------------------------------------------------------- the guard


class Guard:
    """ASGI middleware: the bearer token on ``/api`` and ``/v1`` (when set), the ``Host`` check
    (when ``hosts`` is given) and safety headers on every response. Plain ASGI rather than
    ``BaseHTTPMiddleware`` so streamed replies pass through untouched."""

    def __init__(self, app: ASGIApp, token: str | None = None, hosts: frozenset[str] | None = None) -> None:
        self.app, self.token, self.hosts = app, token, hosts

    def _authorized(self, scope: Scope) -> bool:
        if not self.token:
            return True
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        guarded = any(path == p or path.startswith(p + "/") for p in PROTECTED)
        if self.hosts is not None:
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"host"), "")
            if _host_name(host).lower() not in self.hosts:
                await api_error(403, f"host {host!r} is not served here (this server answers on loopback names only)")(scope, receive, send)
                return
        if guarded and not self._authorized(scope):
            resp = api_error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "authentication_error")
            resp.headers["WWW-Authenticate"] = "Bearer"
            await resp(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                if guarded:
                    headers["Cache-Control"] = "no-store"
                else:
                    headers["Content-Security-Policy"] = PAGE_CSP
                    headers["X-Frame-Options"] = "DENY"
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --------------------------------------------------------------------------- input checks


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, f"{what} must be a non-empty string")
    if len(value) > MAX_NAME or _CONTROL.search(value):
        raise ApiError(422, f"{what} must be at most {MAX_NAME} characters with no control characters")
    return value


def _query_name(request: Request, key: str, required: bool = True) -> str | None:
    value = request.query_params.get(key)
    if value is None:
        if required:
            raise ApiError(422, f"query parameter {key!r} is required")
        return None
    if not value.strip():
        raise ApiError(422, f"query parameter {key!r} must not be empty")
    return value  # a lookup: any existing name, whatever its length (API clients name users freely)


def _int_param(request: Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, f"{key} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(422, f"{key} must be between {low} and {high}, got {value}")
    return value


def _memo_id(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit():
        raise ApiError(422, f"memo id must be a positive integer, got {raw!r}")
    if int(raw) >= 2**63:  # past SQLite's integers: no such memo can exist
        raise NotFound(f"no memo with id {raw}")
    return int(raw)


async def _json_object(request: Request, fields: tuple[str, ...]) -> dict[str, Any]:
    """The body as a JSON object holding only ``fields``. JSON content type required: a cross-site
    form cannot send it without a CORS preflight, which this server never grants."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "send the body as application/json")
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(422, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "the request body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ApiError(422, f"unknown field {unknown[0]!r}; allowed: {', '.join(fields)}")
    return body


# --------------------------------------------------------------------------- routes


def add_web(app: FastAPI, bot: MemoChat) -> None:
    """Register the page (``/``, ``/static/``), the ``/api/`` routes and one-line error handlers on ``app``."""
    store = bot.store

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return api_error(exc.status, exc.message, exc.kind)

    async def on_not_found(request: Request, exc: Exception) -> Response:
        return api_error(404, str(exc), "not_found")

    async def on_bad_input(request: Request, exc: Exception) -> Response:
        return api_error(422, str(exc))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return api_error(422, f"{where}: {first.get('msg', 'invalid request')}")

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return api_error(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "invalid_request_error")

    async def on_crash(request: Request, exc: Exception) -> Response:
        return api_error(500, f"internal error ({type(exc).__name__}); see the server log", "server_error")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(NotFound, on_not_found)
    app.add_exception_handler(BadInputError, on_bad_input)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/users")
    def users() -> dict[str, Any]:
        return {"users": store.users()}

    @app.get("/api/sessions")
    def sessions(request: Request) -> dict[str, Any]:
        user = _query_name(request, "user")
        assert user is not None
        return {"user": user, "sessions": store.sessions(user)}

    @app.post("/api/sessions", status_code=201)
    async def create_session(request: Request) -> dict[str, Any]:
        body = await _json_object(request, ("user", "session"))
        user, session = _name(body.get("user"), "user"), _name(body.get("session"), "session")
        # the same creation (and seed lines) as a first chat turn would do
        state = await run_in_threadpool(store.session_state, user, session, bot.config.seed_lines)
        return {"user": user, "session": session, "turns": state.turn}

    @app.get("/api/lines")
    def lines(request: Request) -> dict[str, Any]:
        user, session = _query_name(request, "user"), _query_name(request, "session")
        assert user is not None and session is not None
        known = {s["session"]: s for s in store.sessions(user)}
        if session not in known:
            raise NotFound(f"user {user!r} has no session named {session!r}")
        return {"user": user, "session": session, "turns": known[session]["turns"], "lines": store.lines(user, session)}

    @app.get("/api/memos")
    def memos(request: Request) -> dict[str, Any]:
        user = _query_name(request, "user")
        session = _query_name(request, "session", required=False)
        assert user is not None
        if session is not None and session not in {s["session"] for s in store.sessions(user)}:
            raise NotFound(f"user {user!r} has no session named {session!r}")
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0, 10**9)
        found = store.find_memos(user, request.query_params.get("q", ""), session)
        return {"user": user, "total": len(found), "offset": offset, "memos": [m.to_dict() for m in found[offset : offset + limit]]}

    @app.get("/api/memos/{memo_id}")
    def memo(memo_id: str) -> dict[str, Any]:
        return store.memo(_memo_id(memo_id)).to_dict()

    @app.patch("/api/memos/{memo_id}")
    async def edit_memo(memo_id: str, request: Request) -> dict[str, Any]:
        mid = _memo_id(memo_id)
        body = await _json_object(request, ("topic", "summary"))
        updated = await run_in_threadpool(store.update_memo, mid, body.get("topic"), body.get("summary"))
        return updated.to_dict()

    @app.delete("/api/memos/{memo_id}")
    async def delete_memo(memo_id: str) -> dict[str, Any]:
        mid = _memo_id(memo_id)
        if await run_in_threadpool(store.delete_memos, [mid]) != 1:
            raise NotFound(f"no memo with id {mid}")
        return {"deleted": mid}

    @app.get("/api/export")
    def export(request: Request) -> Response:
        user = _query_name(request, "user")
        assert user is not None
        records = store.export_records(user)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", user)[:64] or "user"
        return Response(body, media_type="application/x-ndjson; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="memochat-{safe}.jsonl"'})  # fmt: skip
