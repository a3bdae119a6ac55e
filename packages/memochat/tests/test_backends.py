"""Generators: a real tiny transformers model, the OpenAI-compatible client against a real server, stops."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from memochat.backends import BackendError, OpenAIGenerator, ScriptedGenerator, TransformersGenerator, cut_at_stop
from memochat.config import MemoConfig
from memochat.models import ByteTokenizer, tiny_llama
from memochat.pipeline import MemoChat
from memochat.server import create_app, running_server
from memochat.store import MemoStore


@pytest.fixture(scope="module")
def tiny() -> TransformersGenerator:
    torch.manual_seed(0)
    return TransformersGenerator(tiny_llama(hidden=32, layers=1, heads=2), ByteTokenizer(), template="raw", prefix="<s>\n")


def test_cut_at_stop() -> None:
    assert cut_at_stop('[{"a": 1}] trailing', ["]"]) == '[{"a": 1}]'
    assert cut_at_stop("\n2#3\nmore", ["\n"]) == "\n2#3\n"  # a leading newline does not stop it
    assert cut_at_stop("no stop", ["]"]) == "no stop"


def test_transformers_generate_is_greedy_and_stream_matches(tiny: TransformersGenerator) -> None:
    a = tiny.generate("hello", max_new_tokens=12)
    assert a == tiny.generate("hello", max_new_tokens=12)
    assert "".join(tiny.stream("hello", max_new_tokens=12)) == a
    ids = tiny._input_ids("hello")
    assert ids == ByteTokenizer().encode("<s>\nhello\n")  # the official raw layout: prefix + prompt + suffix


def test_transformers_truncates_from_the_left(tiny: TransformersGenerator) -> None:
    text = "abcdefghij" * 10
    cut = tiny.truncate_left(text, 30)
    overhead = len(tiny._input_ids(""))
    assert cut == text[-(30 - overhead) :] and tiny.count_tokens(cut) == 30 - overhead
    assert tiny.truncate_left("short", 30) == "short"


def test_transformers_stop_strings(tiny: TransformersGenerator) -> None:
    full = tiny.generate("stop test", max_new_tokens=24)
    stop = next(ch for ch in full if not ch.isspace())
    got = tiny.generate("stop test", max_new_tokens=24, stop=[stop])
    assert got == cut_at_stop(full, [stop]), [hex(ord(c)) for c in full]
    assert got.endswith(stop) and len(got) < len(full)


def _forward_counter(gen: TransformersGenerator) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    calls: list[int] = []
    return calls, gen.model.register_forward_hook(lambda module, args, out: calls.append(1))


def _generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t is not threading.current_thread() and t.daemon and t.is_alive()]


def test_closing_a_stream_stops_its_generation(tiny: TransformersGenerator) -> None:
    before = set(_generation_threads())
    calls, hook = _forward_counter(tiny)
    try:
        stream = tiny.stream("an abandoned answer", max_new_tokens=2000)
        assert next(stream)  # generation is running in its thread
        started = [t for t in _generation_threads() if t not in before]
        assert started
        t = time.perf_counter()
        stream.close()  # the client went away
        assert time.perf_counter() - t < 5.0
        assert not any(th.is_alive() for th in started)  # no generation outlives the stream
        n = len(calls)
        time.sleep(0.2)
        assert len(calls) == n < 200  # stopped after a few steps, far from max_new_tokens
    finally:
        hook.remove()


def test_an_exception_in_the_consumer_stops_the_generation(tiny: TransformersGenerator) -> None:
    calls, hook = _forward_counter(tiny)
    try:
        with pytest.raises(RuntimeError, match="consumer broke"):
            for _ in tiny.stream("a consumer that fails", max_new_tokens=2000):
                raise RuntimeError("consumer broke")
        n = len(calls)
        time.sleep(0.2)
        assert len(calls) == n < 200
    finally:
        hook.remove()


def test_a_fully_consumed_stream_is_the_whole_reply(tiny: TransformersGenerator) -> None:
    calls, hook = _forward_counter(tiny)
    try:
        pieces = list(tiny.stream("the whole reply", max_new_tokens=40))
    finally:
        hook.remove()
    assert "".join(pieces) == tiny.generate("the whole reply", max_new_tokens=40)
    assert len(calls) == 40  # one forward per token: the abandon check never cut a complete stream short
    full = tiny.generate("stop test", max_new_tokens=24)
    stop = next(ch for ch in full if not ch.isspace())
    assert "".join(tiny.stream("stop test", max_new_tokens=24, stop=[stop])) == tiny.generate("stop test", max_new_tokens=24, stop=[stop])


def test_an_abandoned_turn_stops_the_model(tiny: TransformersGenerator, tmp_path: Path) -> None:
    with MemoStore(tmp_path / "a.db") as store:
        bot = MemoChat(tiny, store, MemoConfig(prefilter="none", answer_tokens=2000))
        calls, hook = _forward_counter(tiny)
        try:
            turn = bot.chat_stream("hello there", user="u", session="s")
            assert isinstance(next(turn), str)
            turn.close()
            n = len(calls)
            time.sleep(0.2)
            assert len(calls) == n < 400  # the writing/retrieval steps may not run at turn 1; the answer stopped
        finally:
            hook.remove()
        assert store.lines("s") == []  # the abandoned turn committed nothing


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    bot = MemoChat(ScriptedGenerator(lambda p, t: "served answer" if t == "chatting" else "1"), MemoStore(tmp_path / "s.db"),
                   MemoConfig(prefilter="none"))  # fmt: skip
    with running_server(create_app(bot)) as url:
        yield url, bot


def test_openai_client_generate_and_stream(served) -> None:  # type: ignore[no-untyped-def]
    url, bot = served
    gen = OpenAIGenerator(url, retries=0)
    gen.check()
    assert gen.generate("hi", max_new_tokens=8) == "served answer"
    assert "".join(gen.stream("again", max_new_tokens=8)) == "served answer"
    assert bot.store.lines("default")[-4:] == ["user: hi", "bot: served answer", "user: again", "bot: served answer"]


def test_openai_client_is_closed_by_close_and_by_with(served) -> None:  # type: ignore[no-untyped-def]
    url, _ = served
    gen = OpenAIGenerator(url, retries=0)
    assert gen.generate("hi", max_new_tokens=8) == "served answer" and not gen.client.is_closed
    gen.close()
    assert gen.client.is_closed
    gen.close()  # twice is harmless
    with OpenAIGenerator(url, retries=0) as gen2:
        assert "".join(gen2.stream("hi", max_new_tokens=8)) == "served answer"
    assert gen2.client.is_closed
    with pytest.raises(RuntimeError), OpenAIGenerator(url, retries=0) as gen3:  # closed on an error too
        raise RuntimeError("boom")
    assert gen3.client.is_closed
    with ScriptedGenerator(["a"]) as scripted:  # the default close is a no-op
        assert scripted.generate("x", max_new_tokens=1) == "a"


def test_unreachable_server_is_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    gen = OpenAIGenerator(f"http://127.0.0.1:{port}/v1", retries=1, backoff=0.01, timeout=2)
    with pytest.raises(BackendError, match=f"cannot reach http://127.0.0.1:{port}/v1"):
        gen.generate("hi", max_new_tokens=4)
    with pytest.raises(BackendError):
        gen.check()


def test_client_errors_are_not_retried(served) -> None:  # type: ignore[no-untyped-def]
    url, _ = served
    gen = OpenAIGenerator(url.replace("/v1", "/nope"), retries=3, backoff=5.0)
    with pytest.raises(BackendError, match="HTTP 404"):  # would take 35 s if 4xx were retried
        gen.generate("hi", max_new_tokens=4)


def test_bad_url_scheme() -> None:
    with pytest.raises(BackendError.__mro__[1], match="http:// or https://"):
        OpenAIGenerator("localhost:8000")


@pytest.mark.slow
def test_smollm2_gguf_is_converted_once_and_cached(tmp_path: Path) -> None:
    import time

    from memochat.backends import gguf_to_folder, smollm2_gguf

    folder = gguf_to_folder(smollm2_gguf(), tmp_path)
    assert (folder / ".complete").is_file() and (folder / "model.safetensors").is_file()
    t = time.perf_counter()
    assert gguf_to_folder(smollm2_gguf(), tmp_path) == folder and time.perf_counter() - t < 1.0  # no second conversion
    gen = TransformersGenerator.from_pretrained(smollm2_gguf(), cache_dir=tmp_path)
    assert gen.template == "chat" and gen.generate("Say hello.", max_new_tokens=8).strip()


def _sse_client(*events: str) -> httpx.Client:
    body = "".join(f"data: {e}\n\n" for e in events).encode()
    return httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, content=body,
                                                                                      headers={"content-type": "text/event-stream"})))  # fmt: skip


def test_stream_skips_chunks_without_choices_and_names_bad_ones() -> None:
    gen = OpenAIGenerator("http://model.invalid/v1", retries=0)
    piece = '{"choices": [{"index": 0, "delta": {"content": "%s"}}]}'
    gen.client = _sse_client(piece % "hel", '{"choices": [], "usage": {"total_tokens": 3}}', piece % "lo", "[DONE]")
    assert "".join(gen.stream("hi", max_new_tokens=4)) == "hello"  # the closing usage chunk has no choices
    for bad, says in (("{not json", "not JSON"), ("[1]", "not a JSON object"), ('{"error": {"message": "model fell over"}}', "model fell over")):
        gen.client = _sse_client(piece % "a", bad, "[DONE]")
        with pytest.raises(BackendError, match=says):
            list(gen.stream("hi", max_new_tokens=4))


def test_failed_gguf_conversion_leaves_no_half_written_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from memochat.backends import gguf_to_folder

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF not really")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("cannot read the GGUF file")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="cannot read"):
        gguf_to_folder(gguf, cache)
    assert list(cache.iterdir()) == []
