"""The memo browser: ``/api/`` over a real uvicorn server, then the page itself in headless Chromium.

Run as a script, this file also produces the README's screenshot and timings::

    python packages/memochat/tests/test_web.py --screenshot packages/memochat/docs/web.png --repeats 15
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from memochat.backends import ScriptedGenerator
from memochat.cli import build_parser, main
from memochat.config import MemoConfig
from memochat.pipeline import MemoChat
from memochat.server import create_app, running_server
from memochat.store import MemoStore, NewMemo, read_export
from memochat.web import LOOPBACK_HOSTS, STATIC, is_loopback

try:  # the browser tests skip, naming the reason, where selenium is missing
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - selenium is a dev dependency
    webdriver = None  # type: ignore[assignment]

TOKEN = "s3cret-token"
XSS_TOPIC = '<img src=x onerror="window.__pwned=1">'
XSS_SUMMARY = "<script>window.__pwned=2</script>"


class WordStreamer(ScriptedGenerator):
    """The scripted backend, streaming its answer word by word (as a real model streams tokens)."""

    def stream(self, prompt: str, *, max_new_tokens: int, stop: Sequence[str] = (), task: str = "chatting") -> Iterator[str]:
        yield from re.findall(r"\S+\s*", self.generate(prompt, max_new_tokens=max_new_tokens, stop=stop, task=task))


def _reply(prompt: str, task: str) -> str:
    if task == "writing":
        n = prompt.count("(line ")
        return json.dumps([{"topic": "first half", "summary": "the start", "start": 1, "end": n // 2},
                           {"topic": "second half", "summary": "the rest", "start": n // 2 + 1, "end": n}])  # fmt: skip
    if task == "retrieval":
        return "2"
    return f"Noted: {prompt.count('Related Topics')} memos in view."


def _bot(db: Path) -> MemoChat:
    """Memo writing on the 3rd turn of a session (6 buffered lines: the 2 seed lines and 2 turns)."""
    return MemoChat(WordStreamer(_reply), MemoStore(db), MemoConfig(prefilter="none", max_lines=6))


@contextmanager
def serving(db: Path, api_key: str | None = None, hosts: frozenset[str] | None = None) -> Iterator[tuple[str, MemoChat]]:
    """A real server on a free local port; yields its base URL (no ``/v1``) and the bot."""
    bot = _bot(db)
    try:
        with running_server(create_app(bot, api_key=api_key, hosts=hosts)) as url:
            yield url.removesuffix("/v1"), bot
    finally:
        bot.store.close()


def _check_error(r: httpx.Response, status: int, says: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert "Traceback" not in r.text and r.headers["content-type"].startswith("application/json")
    message = r.json()["error"]["message"]
    assert "\n" not in message and says in message, message


# =========================================================================== the JSON API


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for the module (a bare ``httpx.get`` builds a new client, SSL context included, per call)."""
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[str, MemoChat]]:
    with serving(tmp_path / "api.db") as (base, bot):
        for text in ("My sister is called Ines.", "She lives in Porto, café owner.", "We meet every June."):
            bot.chat(text, user="ana", session="s1")  # the 3rd turn writes two memos
        yield base, bot


def test_read_routes(api: tuple[str, MemoChat], http: httpx.Client) -> None:
    base, bot = api
    assert http.get(f"{base}/api/users").json() == {"users": [{"name": "ana", "sessions": 1, "memos": 2}]}
    assert http.get(f"{base}/api/sessions", params={"user": "ana"}).json()["sessions"] == [
        {"user": "ana", "session": "s1", "turns": 3, "memos": 2}]  # fmt: skip
    lines = http.get(f"{base}/api/lines", params={"user": "ana", "session": "s1"}).json()
    assert lines["turns"] == 3 and lines["lines"][-2:] == ["user: We meet every June.", "bot: Noted: 1 memos in view."]
    got = http.get(f"{base}/api/memos", params={"user": "ana"}).json()
    assert got["total"] == 2 and [m["topic"] for m in got["memos"]] == ["first half", "second half"]
    first = got["memos"][0]
    assert first["dialogs"] == ["user: My sister is called Ines.", "bot: Noted: 0 memos in view."]
    assert abs(first["created_at"] - time.time()) < 60 and first["updated_at"] is None
    assert http.get(f"{base}/api/memos/{first['id']}").json() == first
    # search: case-insensitive and Unicode-aware, over topic, summary and dialogue lines
    assert [m["topic"] for m in http.get(f"{base}/api/memos", params={"user": "ana", "q": "CAFÉ"}).json()["memos"]] == ["second half"]
    assert http.get(f"{base}/api/memos", params={"user": "ana", "q": "the START"}).json()["total"] == 1
    page = http.get(f"{base}/api/memos", params={"user": "ana", "limit": 1, "offset": 1}).json()
    assert page["total"] == 2 and [m["topic"] for m in page["memos"]] == ["second half"]
    created = http.post(f"{base}/api/sessions", json={"user": "bo", "session": "morning"})
    assert created.status_code == 201 and created.json() == {"user": "bo", "session": "morning", "turns": 0}
    assert bot.store.lines("bo", "morning") == bot.config.seed_lines  # as a first chat turn would create it


def test_edit_and_delete_reach_api_clients_at_once(api: tuple[str, MemoChat], http: httpx.Client) -> None:
    base, bot = api
    first, second = bot.store.memos("ana")
    version = bot.store.memo_stamp("ana")[0]
    r = http.patch(f"{base}/api/memos/{first.id}", json={"topic": "  Sister: Ines ", "summary": "The user's sister is Ines."})
    assert r.status_code == 200 and r.json()["topic"] == "Sister: Ines" and r.json()["updated_at"] is not None
    assert bot.store.memo(first.id).summary == "The user's sister is Ines." and bot.store.memo_stamp("ana")[0] == version + 1
    assert http.delete(f"{base}/api/memos/{second.id}").json() == {"deleted": second.id}
    out = http.post(f"{base}/v1/chat/completions", json={"user": "ana", "messages": [{"role": "user", "content": "Who is my sister?"}]},
                     headers={"X-Memochat-Session": "s1"}).json()  # fmt: skip
    assert out["memochat"]["retrieved"] == [{"id": first.id, "topic": "Sister: Ines", "summary": "The user's sister is Ines."}]
    retrieval_prompt = [p for task, p in bot.generator.calls if task == "retrieval"][-1]  # type: ignore[attr-defined]
    assert "Sister: Ines. The user's sister is Ines." in retrieval_prompt and "second half" not in retrieval_prompt
    assert bot.store.check()["ok"]


def test_export_is_the_users_importable_jsonl(api: tuple[str, MemoChat], tmp_path: Path, http: httpx.Client) -> None:
    base, bot = api
    bot.chat("hello", user="other", session="x")
    r = http.get(f"{base}/api/export", params={"user": "ana"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    assert 'filename="memochat-ana.jsonl"' in r.headers["content-disposition"]
    path = tmp_path / "ana.jsonl"
    path.write_bytes(r.content)
    assert {rec.get("user", rec.get("name")) for rec in read_export(path)[1:]} == {"ana"}  # nobody else's data
    with MemoStore(tmp_path / "copy.db") as copy:
        copy.import_jsonl(path)
        assert [m.to_dict() | {"id": 0} for m in copy.memos()] == [m.to_dict() | {"id": 0} for m in bot.store.memos("ana")]
        assert copy.check()["ok"]


def test_bad_requests_are_one_line_errors(api: tuple[str, MemoChat], http: httpx.Client) -> None:
    base, bot = api
    mid = bot.store.memos("ana")[0].id
    before = bot.store.export_records()
    _check_error(http.get(f"{base}/api/memos", params={"user": "bob"}), 404, "no user named 'bob'")
    _check_error(http.get(f"{base}/api/sessions", params={"user": "bob"}), 404, "no user named 'bob'")
    _check_error(http.get(f"{base}/api/export", params={"user": "bob"}), 404, "no user named 'bob'")
    _check_error(http.get(f"{base}/api/lines", params={"user": "ana", "session": "nope"}), 404, "no session named 'nope'")
    _check_error(http.get(f"{base}/api/memos", params={"user": "ana", "session": "nope"}), 404, "no session named 'nope'")
    _check_error(http.get(f"{base}/api/memos"), 422, "'user' is required")
    _check_error(http.get(f"{base}/api/memos", params={"user": "ana", "limit": "ten"}), 422, "limit must be an integer")
    _check_error(http.get(f"{base}/api/memos", params={"user": "ana", "limit": 0}), 422, "between 1 and")
    _check_error(http.get(f"{base}/api/memos/999"), 404, "no memo with id 999")
    _check_error(http.get(f"{base}/api/memos/abc"), 422, "memo id must be a positive integer")
    _check_error(http.get(f"{base}/api/memos/{10**30}"), 404, f"no memo with id {10**30}")
    _check_error(http.get(f"{base}/api/memos", params={"user": " "}), 422, "'user' must not be empty")
    _check_error(http.delete(f"{base}/api/memos/999"), 404, "no memo with id 999")
    _check_error(http.patch(f"{base}/api/memos/999", json={"topic": "x"}), 404, "no memo with id 999")
    url = f"{base}/api/memos/{mid}"
    _check_error(http.patch(url, content=b"{not json", headers={"content-type": "application/json"}), 422, "not valid JSON")
    _check_error(http.patch(url, json=["topic"]), 422, "must be a JSON object")
    _check_error(http.patch(url, json={}), 422, "nothing to change")
    _check_error(http.patch(url, json={"topic": "   "}), 422, "topic must not be empty")
    _check_error(http.patch(url, json={"topic": 5}), 422, "topic must be a string")
    _check_error(http.patch(url, json={"summary": "x" * 5000}), 422, "at most 4000")
    _check_error(http.patch(url, json={"topic": "ok", "colour": "red"}), 422, "unknown field 'colour'")
    _check_error(http.patch(url, content=b'{"topic": "x"}', headers={"content-type": "text/plain"}), 415, "application/json")
    _check_error(http.post(f"{base}/api/sessions", json={"user": "", "session": "s"}), 422, "user must be a non-empty string")
    _check_error(http.post(f"{base}/api/sessions", json={"user": "a\nb", "session": "s"}), 422, "no control characters")
    _check_error(http.get(f"{base}/api/nothing-here"), 404, "Not Found")
    _check_error(http.put(f"{base}/api/memos/{mid}", json={}), 405, "Method Not Allowed")
    assert bot.store.export_records() == before  # nothing refused changed anything


def test_server_fault_is_one_line_without_traceback(api: tuple[str, MemoChat], http: httpx.Client) -> None:
    base, bot = api
    bot.store.conn.close()  # a real fault inside a route: every query now fails
    _check_error(http.get(f"{base}/api/users"), 500, "internal error (ProgrammingError)")


def test_page_is_static_and_public_but_data_needs_the_token(tmp_path: Path, http: httpx.Client) -> None:
    with serving(tmp_path / "t.db", api_key=TOKEN) as (base, bot):
        bot.chat("my secret is 4417", user="zoe", session="s")
        page = http.get(f"{base}/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"] and page.headers["x-frame-options"] == "DENY"
        assert "zoe" not in page.text and "4417" not in page.text
        for name, kind in (("app.js", "javascript"), ("app.css", "text/css")):
            r = http.get(f"{base}/static/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"] and "zoe" not in r.text
        assert http.get(f"{base}/health").json() == {"ok": True}
        body = {"user": "zoe", "messages": [{"role": "user", "content": "what is my secret?"}]}
        for method, path, kw in (("GET", "/api/users", {}), ("GET", "/api/memos?user=zoe", {}), ("GET", "/v1/models", {}),
                                 ("POST", "/v1/chat/completions", {"json": body}), ("DELETE", "/api/memos/1", {})):  # fmt: skip
            for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                r = http.request(method, base + path, headers=auth, **kw)  # type: ignore[arg-type]
                _check_error(r, 401, "missing or wrong API key")
                assert r.headers["www-authenticate"] == "Bearer"
        assert bot.store.session_state("zoe", "s").turn == 1  # the refused turn never ran
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert http.get(f"{base}/api/users", headers=ok).json()["users"][0]["name"] == "zoe"
        assert http.get(f"{base}/api/users", headers=ok).headers["cache-control"] == "no-store"
        assert http.post(f"{base}/v1/chat/completions", json=body, headers=ok).status_code == 200


def test_loopback_server_refuses_foreign_host_names(tmp_path: Path, http: httpx.Client) -> None:
    """What ``memochat serve`` does on 127.0.0.1 without a key: a DNS-rebinding page reaches the port
    under its own name, which is refused before any route runs."""
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.com")
    with serving(tmp_path / "h.db", hosts=LOOPBACK_HOSTS) as (base, bot):
        bot.chat("hello", user="ana", session="s")
        port = base.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert http.get(f"{base}/api/users", headers={"Host": host}).status_code == 200, host
        for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example"):
            for path in ("/api/users", "/", "/v1/models"):
                _check_error(http.get(base + path, headers={"Host": host}), 403, "is not served here")


def test_page_assets_never_inject_markup() -> None:
    """The page's rule, checked where it is written: data reaches the DOM through textContent only."""
    js = re.sub(r"^\s*//.*$", "", (STATIC / "app.js").read_text(), flags=re.M)  # code, not the comments saying so
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, sink
    assert "<script>" not in (STATIC / "index.html").read_text()  # no inline script: the CSP forbids it


def test_cli_serve_flags_and_one_users_export(api: tuple[str, MemoChat], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["serve", "--model", "oracle"])
    assert args.host == "127.0.0.1" and args.api_key is None and args.model_api_key is None
    args = build_parser().parse_args(["serve", "--api-key", "k", "--model-api-key", "m", "--model", "http://x/v1"])
    assert (args.api_key, args.model_api_key) == ("k", "m")
    assert build_parser().parse_args(["chat", "--api-key", "m"]).model_api_key == "m"  # other commands: the model's key
    _, bot = api
    bot.chat("hi", user="bo", session="x")
    out = tmp_path / "ana.jsonl"
    assert main(["memos", "export", "--db", str(bot.store.path), "--user", "ana", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exported"] == len(out.read_text().splitlines())
    assert {r["name"] for r in read_export(out) if r["type"] == "user"} == {"ana"}


# =========================================================================== the page in a real browser


def chrome_paths() -> tuple[str, str] | str:
    """(chromium, chromedriver), or why the browser tests cannot run here."""
    if webdriver is None:
        return "selenium is not installed (pip install selenium)"
    chromium = os.environ.get("MEMOCHAT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("MEMOCHAT_CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium:
        return "Chromium is not installed (apt-get install chromium, see packages/memochat/apt.txt)"
    if not driver:
        return "chromedriver is not installed (apt-get install chromium-driver, see packages/memochat/apt.txt)"
    return chromium, driver


def start_browser(downloads: Path | None = None, width: int = 1280, height: int = 760) -> Any:
    """Headless Chromium through selenium, with the system's chromedriver (nothing downloaded)."""
    paths = chrome_paths()
    assert not isinstance(paths, str), paths
    opts = webdriver.ChromeOptions()
    opts.binary_location = paths[0]
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                f"--window-size={width},{height}", "--lang=en-US"):  # fmt: skip
        opts.add_argument(arg)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        opts.add_argument("--no-sandbox")  # Chromium refuses to sandbox as root (CI containers)
    if downloads is not None:
        opts.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(paths[1]), options=opts)
    driver.set_page_load_timeout(30)
    return driver


def wait(driver: Any, cond: Callable[[Any], Any], timeout: float = 15.0) -> Any:
    """Poll ``cond`` until truthy; elements replaced by a re-render meanwhile are simply polled again."""
    return WebDriverWait(driver, timeout, poll_frequency=0.02, ignored_exceptions=(StaleElementReferenceException,)).until(cond)


def _css(driver: Any, selector: str) -> list[Any]:
    return list(driver.find_elements("css selector", selector))


def load_page(driver: Any, base: str) -> None:
    driver.get(base + "/")
    wait(driver, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") in ("1", "error"))


def open_session(driver: Any, user: str, session: str) -> None:
    for field, value in (("user", user), ("session", session)):
        box = driver.find_element("id", field)
        box.clear()
        box.send_keys(value)
    driver.find_element("id", "open").click()
    wait(driver, lambda d: d.find_element("id", "chat-title").text == f"Chat: {user} / {session}")


def send_message(driver: Any, text: str) -> Any:
    """Type and send ``text``; returns the bot's bubble once its streamed reply is complete."""
    done = len(_css(driver, "li.msg.bot[data-state]"))
    box = driver.find_element("id", "input")
    box.send_keys(text)
    driver.find_element("id", "send-btn").click()
    wait(driver, lambda d: len(_css(d, "li.msg.bot[data-state]")) > done and _css(d, "li.msg.bot[data-state]")[-1].get_attribute("data-state") != "streaming")
    return _css(driver, "li.msg.bot[data-state]")[-1]


def memo_card(driver: Any, topic: str) -> Any:
    return next(c for c in _css(driver, "#memos li.memo") if c.find_element("css selector", ".topic").text == topic)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    paths = chrome_paths()
    if isinstance(paths, str):
        pytest.skip(paths)
    downloads = tmp_path_factory.mktemp("downloads")
    driver = start_browser(downloads)
    driver.downloads = downloads
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, MemoChat]]:
    with serving(tmp_path_factory.mktemp("site") / "web.db") as served:
        yield served


@pytest.mark.integration
def test_chat_stream_memos_edit_delete_reload(browser: Any, site: tuple[str, MemoChat], tmp_path: Path) -> None:
    base, bot = site
    d = browser
    load_page(d, base)
    open_session(d, "ana", "s1")
    first = send_message(d, "My sister is called Ines.")
    assert first.find_element("css selector", ".text").text == "Noted: 0 memos in view."
    assert int(first.get_attribute("data-chunks")) == 5  # streamed word by word through /v1, as API clients get it
    send_message(d, "She lives in Porto.")
    assert _css(d, "#memos li.memo") == []
    third = send_message(d, "We meet every June.")  # the 3rd turn fills the buffer: memos are written
    assert "memo written: first half" in third.text and "memo written: second half" in third.text
    assert [c.text for c in third.find_elements("css selector", ".chip")] == ["first half"]  # the retrieval step's pick
    wait(d, lambda d: len(_css(d, "#memos li.memo")) == 2)
    card = memo_card(d, "first half")
    assert card.find_element("css selector", ".summary").text == "the start"
    card.find_element("css selector", "details summary").click()
    assert [li.text for li in card.find_elements("css selector", ".dialogs li")] == ["user: My sister is called Ines.", "bot: Noted: 0 memos in view."]

    card.find_element("css selector", "button.edit").click()  # edit the topic and summary
    topic = d.find_element("css selector", "#memos .edit-topic")
    topic.clear()
    topic.send_keys("Sister: Ines")
    summary = d.find_element("css selector", "#memos .edit-summary")
    summary.clear()
    summary.send_keys("The user's sister is Ines.")
    d.find_element("css selector", "#memos button.save").click()
    wait(d, lambda d: any(c.text == "Sister: Ines" for c in _css(d, "#memos .topic")))
    mid = int(memo_card(d, "Sister: Ines").get_attribute("data-id"))
    assert bot.store.memo(mid).summary == "The user's sister is Ines."  # through the store, at once

    delete = memo_card(d, "second half").find_element("css selector", "button.delete")
    delete.click()
    assert delete.text == "Confirm delete" and len(bot.store.memos("ana")) == 2  # one click deletes nothing
    delete.click()
    wait(d, lambda d: len(_css(d, "#memos li.memo")) == 1)
    assert [m.topic for m in bot.store.memos("ana")] == ["Sister: Ines"]

    search = d.find_element("id", "search")
    search.send_keys("porto")  # the Porto lines were in the deleted memo
    wait(d, lambda d: _css(d, "#memos li.empty") and d.find_element("id", "memo-count").text == "(0 matching)")
    search.clear()
    search.send_keys("INES")
    wait(d, lambda d: d.find_element("id", "memo-count").text == "(1 matching)")
    search.clear()

    d.refresh()  # the page comes back with the same session, the edit and the deletion persisted
    wait(d, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "1")
    assert [c.text for c in _css(d, "#memos .topic")] == ["Sister: Ines"]
    assert [m.text for m in _css(d, "li.msg.user")] == ["My sister is called Ines.", "She lives in Porto.", "We meet every June."]

    fourth = send_message(d, "Who is my sister?")  # the edited memo is what retrieval now sees and picks
    assert fourth.find_element("css selector", ".text").text == "Noted: 1 memos in view."
    assert [c.text for c in fourth.find_elements("css selector", ".chip")] == ["Sister: Ines"]
    assert fourth.get_attribute("data-used") == str(mid)
    wait(d, lambda d: [c.text for c in _css(d, "#memos li.memo.used .topic")] == ["Sister: Ines"])  # highlighted as used
    assert "Sister: Ines. The user's sister is Ines." in [p for t, p in bot.generator.calls if t == "retrieval"][-1]  # type: ignore[attr-defined]

    d.find_element("id", "export").click()  # the download the button produces is the user's importable export
    target = d.downloads / "memochat-ana.jsonl"
    wait(d, lambda d: target.is_file() and target.stat().st_size > 0)
    assert [r["topic"] for r in read_export(target) if r["type"] == "memo"] == [m.topic for m in bot.store.memos("ana")]

    shot = tmp_path / "web.png"
    d.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


@pytest.mark.integration
def test_markup_in_memos_and_messages_shows_as_text(browser: Any, site: tuple[str, MemoChat]) -> None:
    base, bot = site
    state = bot.store.session_state("eve", "été 日本", bot.config.seed_lines)  # any Unicode name works end to end
    bot.store.commit_turn(state, [NewMemo(XSS_TOPIC, XSS_SUMMARY, ['user: <b onmouseover="window.__pwned=3">hi</b>'])], None,
                          ["user: <b>bold?</b>", "bot: <i>italic?</i>"])  # fmt: skip
    d = browser
    load_page(d, base)
    open_session(d, "eve", "été 日本")
    wait(d, lambda d: len(_css(d, "#memos li.memo")) == 1)
    card = _css(d, "#memos li.memo")[0]
    card.find_element("css selector", "details summary").click()
    assert card.find_element("css selector", ".topic").text == XSS_TOPIC
    assert card.find_element("css selector", ".summary").text == XSS_SUMMARY
    assert card.find_element("css selector", ".dialogs li").text == 'user: <b onmouseover="window.__pwned=3">hi</b>'
    assert [m.text for m in _css(d, "li.msg")] == ["<b>bold?</b>", "<i>italic?</i>"]
    reply = send_message(d, "<img src=x onerror=window.__pwned=4>")
    assert _css(d, "li.msg.user")[-1].text == "<img src=x onerror=window.__pwned=4>" and reply.get_attribute("data-state") == "done"
    card = _css(d, "#memos li.memo")[0]
    card.find_element("css selector", "button.edit").click()
    topic = d.find_element("css selector", "#memos .edit-topic")
    topic.clear()
    topic.send_keys("<svg onload=window.__pwned=5>")
    d.find_element("css selector", "#memos button.save").click()
    wait(d, lambda d: [c.text for c in _css(d, "#memos .topic")] == ["<svg onload=window.__pwned=5>"])  # the editor closed
    assert _css(d, "#memos img, #memos script, #memos svg, #memos b, #messages img, #messages b, #messages i") == []
    assert bot.store.lines("eve", "été 日本")[-2] == "user: <img src=x onerror=window.__pwned=4>"
    assert d.execute_script("return window.__pwned") is None


@pytest.mark.integration
def test_token_field_unlocks_the_page(browser: Any, tmp_path: Path) -> None:
    with serving(tmp_path / "locked.db", api_key=TOKEN) as (base, bot):
        bot.chat("my secret is 4417", user="zoe", session="s")
        d = browser
        load_page(d, base)
        assert d.find_element("tag name", "body").get_attribute("data-ready") == "error"
        assert "needs an API key" in d.find_element("id", "status").text
        assert "zoe" not in d.page_source and "4417" not in d.page_source
        d.find_element("id", "token").send_keys(TOKEN)
        d.find_element("id", "use-token").click()
        wait(d, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "1")
        assert d.execute_script("return sessionStorage.getItem('memochat-token')") == TOKEN
        assert [o.get_attribute("value") for o in _css(d, "#user-list option")] == ["zoe"]
        open_session(d, "zoe", "s")
        assert [m.text for m in _css(d, "li.msg.user")] == ["my secret is 4417"]
        assert send_message(d, "what is my secret?").find_element("css selector", ".text").text == "Noted: 0 memos in view."
        assert bot.store.session_state("zoe", "s").turn == 2  # the page's turn went through the guarded /v1


# =========================================================================== screenshot and timings (README)


def measure(driver: Any, base: str, repeats: int) -> dict[str, Any]:
    """Median page load and send-to-first-token times, read from the browser's Performance API."""
    loads, ready = [], []
    for _ in range(repeats):
        load_page(driver, base)
        nav = driver.execute_script("const n = performance.getEntriesByType('navigation')[0]; "
                                    "const r = performance.getEntriesByName('memochat-ready')[0]; "
                                    "return [n.loadEventEnd - n.startTime, r ? r.startTime : null];")  # fmt: skip
        loads.append(nav[0])
        ready.append(nav[1])
    before = driver.execute_script("return window.memochatTimings.length")
    for i in range(repeats):
        send_message(driver, f"timing message {i}")
    timings = driver.execute_script("return window.memochatTimings")[before:]
    ttft = [t["ttft_ms"] for t in timings]
    total = [t["total_ms"] for t in timings]
    return {"repeats": repeats, "load_event_ms": statistics.median(loads), "ready_ms": statistics.median(ready),
            "first_token_ms": statistics.median(ttft), "reply_done_ms": statistics.median(total),
            "first_token_ms_range": [min(ttft), max(ttft)], "load_event_ms_range": [min(loads), max(loads)]}  # fmt: skip


def _demo(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the README's screenshot and page timings (scripted backend)")
    parser.add_argument("--screenshot", default=None, help="where to save the page's PNG")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--db", default=None, help="database folder (default: a temporary one)")
    args = parser.parse_args(argv)
    paths = chrome_paths()
    if isinstance(paths, str):
        print(f"cannot run: {paths}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.db or tmp)
        with serving(folder / "demo.db") as (base, _bot):
            driver = start_browser(width=1280, height=860)
            try:
                load_page(driver, base)
                open_session(driver, "ana", "trip")
                for text in ("Hi! I am planning a trip to Lisbon in May with my brother Tomas.",
                             "Our budget is 900 euros for the whole week.", "Which day trip would you suggest?",
                             "Remind me: who am I travelling with?"):  # fmt: skip
                    send_message(driver, text)
                card = memo_card(driver, "first half")
                card.find_element("css selector", "button.edit").click()
                topic = driver.find_element("css selector", "#memos .edit-topic")
                topic.clear()
                topic.send_keys("Trip to Lisbon with Tomas")
                driver.find_element("css selector", "#memos button.save").click()
                wait(driver, lambda d: any(c.text == "Trip to Lisbon with Tomas" for c in _css(d, "#memos .topic")))
                memo_card(driver, "Trip to Lisbon with Tomas").find_element("css selector", "details summary").click()
                if args.screenshot:
                    driver.save_screenshot(args.screenshot)
                    print(f"screenshot: {args.screenshot}")
                open_session(driver, "bench", "timing")
                result = measure(driver, base, args.repeats)
            finally:
                driver.quit()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(_demo())
