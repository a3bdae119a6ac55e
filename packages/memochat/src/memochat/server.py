"""``memochat serve``: an OpenAI-compatible ``/v1/chat/completions`` with memory, in front of any backend.

Existing clients get long-range memory by changing their base URL. Per request, the server takes
the last user message as the turn's input (the client's own history is not needed: the server keeps
the session's recent lines and memos), runs the memo pipeline for the request's user and session,
and answers in the OpenAI format, streamed (server-sent events) or not.

* user: the request's ``user`` field, else the ``X-Memochat-User`` header, else ``default``;
* session: the ``X-Memochat-Session`` header, else ``metadata.session``, else ``default``.

Turns are serialised (one at a time per server process); several server processes may share one
database (the store keeps them consistent). The same app serves the memo browser page at ``/`` and
its ``/api/`` routes (:mod:`memochat.web`); with an API key, ``/v1`` and ``/api`` need
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from memochat.backends import BackendError
from memochat.pipeline import MemoChat, TurnResult
from memochat.web import LOOPBACK_HOSTS, Guard, add_web, api_error, is_loopback
from slimkit.errors import BadInputError


def _who(body: dict[str, Any], headers: Any) -> tuple[str, str]:
    user = body.get("user") or headers.get("x-memochat-user") or "default"
    meta: dict[str, Any] = body["metadata"] if isinstance(body.get("metadata"), dict) else {}
    session = headers.get("x-memochat-session") or meta.get("session") or "default"
    return str(user), str(session)


def _input(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadInputError("messages must be a non-empty list")
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            if isinstance(content, str) and content.strip():
                return content
            break
    raise BadInputError("the last user message is missing or empty")


def create_app(bot: MemoChat, model_name: str = "memochat", api_key: str | None = None,
               hosts: frozenset[str] | None = None) -> Any:  # fmt: skip
    """The FastAPI app serving ``bot`` (``/v1/chat/completions``, ``/v1/models``, ``/health``, the page
    at ``/`` and ``/api/``); ``api_key`` set, ``/v1`` and ``/api`` need it as a bearer token; ``hosts``
    set, requests naming another ``Host`` are refused."""
    app = FastAPI(title="memochat", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, token=api_key or None, hosts=hosts)
    add_web(app, bot)
    lock = threading.Lock()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "memochat"}]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return api_error(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return api_error(400, "the request body must be a JSON object")
        try:
            text = _input(body)
        except BadInputError as exc:
            return api_error(400, str(exc))
        user, session = _who(body, request.headers)
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), str(body.get("model") or model_name)
        if body.get("stream"):
            return StreamingResponse(_stream(bot, lock, text, user, session, cid, created, model), media_type="text/event-stream")
        def turn() -> TurnResult:
            with lock:
                return bot.chat(text, user=user, session=session)

        try:
            res = await run_in_threadpool(turn)
        except BackendError as exc:
            return api_error(502, str(exc), "backend_error")
        except BadInputError as exc:
            return api_error(400, str(exc))
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.response}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "memochat": {"user": user, "session": session, "turn": res.turn, "written": res.written, "retrieved": res.retrieved},
        }  # fmt: skip

    return app


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None) -> str:
    data: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    if extra:
        data["memochat"] = extra
    return f"data: {json.dumps(data)}\n\n"


_END = object()


def _stream(bot: MemoChat, lock: threading.Lock, text: str, user: str, session: str, cid: str, created: int, model: str) -> Iterator[str]:
    """The turn's server-sent events. The turn runs in a thread of its own, which holds the turn lock
    from start to commit: a client that stops reading (or disconnects, which leaves this generator
    suspended, not closed) can never keep the lock and so block every later turn. Closing this
    generator early abandons the turn, which then commits nothing."""
    items: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        with lock:
            turn = bot.chat_stream(text, user=user, session=session)
            try:
                for piece in turn:
                    if stop.is_set():
                        break
                    items.put(piece)
            except BaseException as exc:  # handed to the response below
                items.put(exc)
            finally:
                turn.close()
                items.put(_END)

    yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
    threading.Thread(target=work, daemon=True).start()
    try:
        while (item := items.get()) is not _END:
            if isinstance(item, (BackendError, BadInputError)):
                yield f"data: {json.dumps({'error': {'message': str(item), 'type': 'backend_error'}})}\n\n"
            elif isinstance(item, BaseException):
                raise item
            elif isinstance(item, TurnResult):
                extra = {"user": user, "session": session, "turn": item.turn, "written": item.written, "retrieved": item.retrieved}
                yield _chunk(cid, created, model, {}, "stop", extra)
            elif item:
                yield _chunk(cid, created, model, {"content": item})
        yield "data: [DONE]\n\n"
    finally:
        stop.set()


@contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its base URL (``http://host:port/v1``)."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise BadInputError(f"could not start the server on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(bot: MemoChat, host: str = "127.0.0.1", port: int = 8000, model_name: str = "memochat",
          api_key: str | None = None) -> None:  # fmt: skip
    """Run the server in the foreground until interrupted. On a loopback address without a key, only
    loopback ``Host`` names are answered: a web page that rebinds its own DNS name to 127.0.0.1 gets 403."""
    hosts = LOOPBACK_HOSTS if api_key is None and is_loopback(host) else None
    uvicorn.run(create_app(bot, model_name, api_key, hosts), host=host, port=port, log_level="info")
