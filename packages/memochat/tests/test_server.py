"""``memochat serve`` through the official ``openai`` client and raw HTTP, streaming included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from memochat.backends import ScriptedGenerator
from memochat.config import MemoConfig
from memochat.pipeline import MemoChat
from memochat.server import create_app, running_server
from memochat.store import MemoStore


def _reply(prompt: str, task: str) -> str:
    if task == "writing":
        n = prompt.count("(line ")
        return json.dumps([{"topic": "earlier talk", "summary": "what the user said", "start": 1, "end": n}])
    if task == "retrieval":
        return "2"
    # the answer says how many evidences the prompt held, so memory is visible from outside
    return f"evidences={prompt.count('Related Topics')} streamed"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, MemoChat]]:
    bot = MemoChat(ScriptedGenerator(_reply), MemoStore(tmp_path / "srv.db"), MemoConfig(prefilter="none"))
    with running_server(create_app(bot)) as url:
        yield url, bot


def test_openai_python_client(server: tuple[str, MemoChat]) -> None:
    openai = pytest.importorskip("openai")
    url, bot = server
    client = openai.OpenAI(base_url=url, api_key="unused")
    for i in range(5):
        out = client.chat.completions.create(model="memochat", messages=[{"role": "user", "content": f"message {i}"}], user="ana")
    assert out.choices[0].message.content == "evidences=1 streamed"  # the 5th turn wrote a memo and used it
    stream = client.chat.completions.create(model="memochat", messages=[{"role": "user", "content": "go on"}], user="ana", stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "evidences=1 streamed"
    assert bot.store.session_state("ana", "default").turn == 6


def test_raw_http_streaming_sessions_and_errors(server: tuple[str, MemoChat]) -> None:
    url, bot = server
    body = {"model": "x", "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hello"}], "stream": True}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, headers={"X-Memochat-Session": "s2", "X-Memochat-User": "bo"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "evidences=0 streamed"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["memochat"]["session"] == "s2"
    assert bot.store.lines("bo", "s2")[-2:] == ["user: hello", "bot: evidences=0 streamed"]
    for bad in ({"messages": []}, {"messages": [{"role": "assistant", "content": "x"}]}, [1, 2]):
        r = httpx.post(f"{url}/chat/completions", json=bad)
        assert r.status_code == 400 and "error" in r.json()
    assert httpx.get(f"{url}/models").json()["data"][0]["id"] == "memochat"


def test_a_client_leaving_a_stream_does_not_block_later_turns(tmp_path: Path) -> None:
    """A streaming client that disconnects mid-answer used to leave the turn lock held: every later
    request hung. Now the turn finishes on its own (and commits), and the next request is served."""
    import time

    class Slow(ScriptedGenerator):
        def stream(self, prompt: str, *, max_new_tokens: int, stop: object = (), task: str = "chatting") -> Iterator[str]:  # type: ignore[override]
            for i in range(10):
                time.sleep(0.05)
                yield f"w{i} "

    bot = MemoChat(Slow(lambda p, t: "ok"), MemoStore(tmp_path / "slow.db"), MemoConfig(prefilter="none"))
    with running_server(create_app(bot)) as url:
        with httpx.stream("POST", f"{url}/chat/completions", json={"stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
            for line in r.iter_lines():
                if "w1" in line:
                    break  # the client leaves after two pieces
        out = httpx.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "again"}]}, timeout=10)
        assert out.status_code == 200 and out.json()["choices"][0]["message"]["content"] == "ok"
    assert bot.store.lines("default")[-2:] == ["user: again", "bot: ok"] and bot.store.check()["ok"]
    bot.store.close()
