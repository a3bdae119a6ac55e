"""The SQLite store: WAL, schema migrations, atomic turns, optimistic concurrency, export / import, checks."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from memochat.backends import ScriptedGenerator
from memochat.bench import kill_test, two_writers
from memochat.config import MemoConfig
from memochat.pipeline import MemoChat
from memochat.store import MIGRATIONS, SCHEMA_VERSION, MemoStore, NewMemo, NotFound, TurnConflict, read_export
from slimkit.errors import BadInputError, CorruptFileError


def _fill(store: MemoStore, scripted: Callable[..., ScriptedGenerator], turns: int = 9, user: str = "ana", session: str = "s1") -> None:
    bot = MemoChat(scripted(), store, MemoConfig(prefilter="none"))
    for i in range(turns):
        bot.chat(f"{user} says {i}", user=user, session=session)


def test_wal_mode_and_schema_version(store: MemoStore) -> None:
    assert store.journal_mode == "wal"
    assert store.schema_version() == SCHEMA_VERSION == 3


def test_migration_from_version_1_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for statement in (s.strip() for s in MIGRATIONS[0][1].split(";")):
        if statement:
            conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO users (name) VALUES ('ana')")
    conn.execute("INSERT INTO sessions (user_id, name, turn) VALUES (1, 's', 1)")
    conn.execute("INSERT INTO lines VALUES (1, 0, 'user: hi', 1), (1, 1, 'bot: hello', 1)")
    conn.execute("INSERT INTO memos (user_id, session_id, topic, summary, dialogs, turn) VALUES (1, 1, 't', 's', '[\"user: hi\"]', 1)")
    conn.commit()
    conn.close()
    with MemoStore(db) as store:
        assert store.schema_version() == SCHEMA_VERSION
        (memo,) = store.memos(with_embeddings=True)
        assert (memo.topic, memo.dialogs, memo.embedding) == ("t", ["user: hi"], None)
        assert store.check()["ok"]


def test_migration_from_version_2_adds_timestamps(tmp_path: Path) -> None:
    """Schema 3 (the memo browser's "when written" and "edited"): old memos keep everything, stamps stay empty."""
    db = tmp_path / "v2.db"
    conn = sqlite3.connect(db)
    for _, sql in MIGRATIONS[:2]:
        for statement in (s.strip() for s in sql.split(";")):
            if statement:
                conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    conn.execute("INSERT INTO users (name) VALUES ('ana')")
    conn.execute("INSERT INTO sessions (user_id, name, turn) VALUES (1, 's', 1)")
    conn.execute("INSERT INTO lines VALUES (1, 0, 'user: hi', 1), (1, 1, 'bot: hello', 1)")
    conn.execute("INSERT INTO memos (user_id, session_id, topic, summary, dialogs, turn, embedding, embed_model) "
                 "VALUES (1, 1, 't', 's', '[\"user: hi\"]', 1, ?, 'm')", (np.ones(2, np.float32).tobytes(),))  # fmt: skip
    conn.commit()
    conn.close()
    with MemoStore(db) as store:
        assert store.schema_version() == 3
        (old,) = store.memos(with_embeddings=True)
        assert (old.topic, old.dialogs, old.created_at, old.updated_at) == ("t", ["user: hi"], None, None)
        assert old.embedding is not None and old.embedding.tolist() == [1.0, 1.0]
        state = store.session_state("ana", "s")
        store.commit_turn(state, [NewMemo("new", "fresh", ["user: a"])], None, ["user: a", "bot: b"])
        assert store.memos()[-1].created_at is not None and store.check()["ok"]


def test_edit_search_and_browse(store: MemoStore, scripted: Callable[..., ScriptedGenerator]) -> None:
    _fill(store, scripted, turns=5, user="ana")
    _fill(store, scripted, turns=5, user="ben", session="s2")
    store.commit_turn(store.session_state("ana", "s1"), [NewMemo("Café Zoë", "crème brûlée", ["user: À bientôt"])], None, ["user: x", "bot: y"])
    assert store.users() == [{"name": "ana", "sessions": 1, "memos": 3}, {"name": "ben", "sessions": 1, "memos": 2}]
    assert [s["session"] for s in store.sessions("ben")] == ["s2"] and len(store.sessions()) == 2
    assert [m.topic for m in store.find_memos("ana", "CAFÉ ZOË")] == ["Café Zoë"]  # Unicode case folding
    assert [m.topic for m in store.find_memos("ana", "à BIENTÔT")] == ["Café Zoë"]  # dialogue lines are searched too
    assert len(store.find_memos("ana", "  ")) == 3 and store.find_memos("ana", "nothing like it") == []
    with pytest.raises(NotFound, match="no user named 'zed'"):
        store.find_memos("zed")
    with pytest.raises(NotFound, match="no user named 'zed'"):
        store.sessions("zed")

    memo = store.memos("ana")[0]
    store.set_embeddings([(memo.id, np.ones(4))], "m")
    version = store.memo_stamp("ana")[0]
    edited = store.update_memo(memo.id, topic="  Sister: Ines  ")
    assert (edited.topic, edited.summary, edited.dialogs) == ("Sister: Ines", memo.summary, memo.dialogs)
    assert edited.updated_at is not None and edited.created_at == memo.created_at
    assert store.memo(memo.id).topic == "Sister: Ines"
    assert store.memo_stamp("ana")[0] == version + 1  # caches reload the new text
    assert [m.embedding for m in store.memos("ana", with_embeddings=True) if m.id == memo.id] == [None]  # stale vector dropped
    assert store.memo_stamp("ben")[0] == 0  # nobody else's memos moved
    for bad, says in (({}, "nothing to change"), ({"topic": " "}, "topic must not be empty"), ({"topic": 3}, "topic must be a string"),
                      ({"summary": "x" * 4001}, "at most 4000")):  # fmt: skip
        with pytest.raises(BadInputError, match=says):
            store.update_memo(memo.id, **bad)
    with pytest.raises(NotFound, match="no memo with id 9999"):
        store.update_memo(9999, topic="x")
    with pytest.raises(NotFound, match="no memo with id 9999"):
        store.memo(9999)
    assert store.memo(memo.id).topic == "Sister: Ines" and store.check()["ok"]


def test_export_of_one_user(tmp_path: Path, store: MemoStore, scripted: Callable[..., ScriptedGenerator]) -> None:
    _fill(store, scripted, turns=5, user="ana")
    _fill(store, scripted, turns=5, user="ben", session="s2")
    store.update_memo(store.memos("ana")[0].id, summary="corrected")
    path = tmp_path / "ana.jsonl"
    store.export_jsonl(path, user="ana")
    with MemoStore(tmp_path / "copy.db") as copy:
        assert copy.import_jsonl(path)["user"] == 1
        assert [m.to_dict() | {"id": 0} for m in copy.memos()] == [m.to_dict() | {"id": 0} for m in store.memos("ana")]
        assert copy.memos()[0].summary == "corrected" and copy.check()["ok"]
    with pytest.raises(NotFound):
        store.export_records("zed")


def test_refuses_newer_schema_foreign_sqlite_and_garbage(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    MemoStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(BadInputError, match="schema version 99"):
        MemoStore(db)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptFileError, match="not a memochat one"):
        MemoStore(other)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(CorruptFileError, match="cannot open database"):
        MemoStore(junk)


def test_stale_turn_conflicts(store: MemoStore) -> None:
    a = store.session_state("u", "s", ["user: x", "bot: y"])
    b = store.session_state("u", "s", ["user: x", "bot: y"])
    store.commit_turn(a, [NewMemo("t", "s", ["user: x"])], 2, ["user: 1", "bot: 1"])
    with pytest.raises(TurnConflict):
        store.commit_turn(b, [NewMemo("t2", "s", ["user: x"])], 2, ["user: 2", "bot: 2"])
    assert [m.topic for m in store.memos()] == ["t"]  # the rejected turn left nothing
    assert store.check()["ok"]


def test_export_import_round_trip(tmp_path: Path, store: MemoStore, scripted: Callable[..., ScriptedGenerator]) -> None:
    _fill(store, scripted, user="ana")
    _fill(store, scripted, turns=5, user="ben", session="s2")
    path = tmp_path / "export.jsonl"
    n = store.export_jsonl(path)
    assert n == len(path.read_text().splitlines())
    with MemoStore(tmp_path / "copy.db") as copy:
        got = copy.import_jsonl(path)
        assert got == {"user": 2, "session": 2, "line": len(store.lines("ana")) + len(store.lines("ben")), "memo": 6}
        assert [m.to_dict() | {"id": 0} for m in copy.memos()] == [m.to_dict() | {"id": 0} for m in store.memos()]
        assert copy.session_state("ana", "s1").buffer == store.session_state("ana", "s1").buffer
        assert copy.check()["ok"]
        with pytest.raises(BadInputError, match="already exists"):  # importing twice would duplicate sessions
            copy.import_jsonl(path)


@pytest.mark.parametrize("damage", ["bad-json", "unknown-type", "orphan-memo", "wrong-field", "no-header", "twice-session", "twice-line"])
def test_malformed_import_is_rejected_whole(tmp_path: Path, store: MemoStore, scripted: Callable[..., ScriptedGenerator], damage: str) -> None:
    _fill(store, scripted)
    path = tmp_path / "export.jsonl"
    store.export_jsonl(path)
    lines = path.read_text().splitlines()
    if damage == "bad-json":
        lines[-1] = lines[-1][:-5]
    elif damage == "unknown-type":
        lines.append(json.dumps({"type": "widget"}))
    elif damage == "orphan-memo":
        lines.append(json.dumps({"type": "memo", "user": "ana", "session": "nope", "turn": 1, "topic": "t", "summary": "",
                                 "dialogs": [], "retrievable": True}))  # fmt: skip
    elif damage == "wrong-field":
        rec = json.loads(lines[-1])
        rec["dialogs"] = "not a list"
        lines[-1] = json.dumps(rec)
    elif damage == "twice-session":  # the same session again, with its lines: would clash on (session, seq)
        lines += [x for x in lines if json.loads(x)["type"] in ("session", "line")]
    elif damage == "twice-line":
        lines.append(next(x for x in lines if json.loads(x)["type"] == "line"))
    else:
        lines = lines[1:]
    path.write_text("\n".join(lines) + "\n")
    with MemoStore(tmp_path / "target.db") as target:
        before = target.export_records()
        with pytest.raises(BadInputError, match=r"nothing imported|not valid JSON"):
            target.import_jsonl(path)
        assert target.export_records() == before


def test_delete_and_check_detects_damage(store: MemoStore, scripted: Callable[..., ScriptedGenerator]) -> None:
    _fill(store, scripted, turns=9)
    ids = [m.id for m in store.memos()]
    assert store.delete_memos(ids[:1]) == 1 and len(store.memos()) == 3
    assert store.memo_stamp("ana")[0] == 1  # deleting bumps the version so caches reload
    assert store.check()["ok"]
    store.conn.execute("DELETE FROM lines WHERE seq = 3")  # a hole in the dialogue
    assert not store.check()["ok"]
    assert store.delete("ana", "s1") == 3 and store.memos() == []
    with pytest.raises(BadInputError, match="no user"):
        store.delete("nobody")


def test_embeddings_are_stored_as_float32(store: MemoStore) -> None:
    st = store.session_state("u", "s")
    v = np.arange(4, dtype=np.float64)
    (mid,) = store.commit_turn(st, [NewMemo("t", "s", [], True, v, "m")], None, ["user: a", "bot: b"])
    (memo,) = store.memos(with_embeddings=True)
    assert memo.id == mid and memo.embedding is not None and memo.embedding.dtype == np.float32
    assert memo.embedding.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_two_connections_on_one_session_stay_consistent(tmp_path: Path, scripted: Callable[..., ScriptedGenerator]) -> None:
    """Two writers (threads, each with its own connection) racing on one session: every turn lands once."""
    db = tmp_path / "two.db"
    MemoStore(db).close()

    def writer(tag: str) -> None:
        with MemoStore(db) as own:
            bot = MemoChat(scripted(), own, MemoConfig(prefilter="none"))
            for i in range(12):
                bot.chat(f"{tag}{i}", user="u", session="shared")

    threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with MemoStore(db) as store:
        assert store.check()["ok"]
        assert store.session_state("u", "shared").turn == 24
        users = [x for x in store.lines("u", "shared") if x.startswith("user: ")][1:]  # after the seed line
        assert sorted(users) == sorted(f"user: {t}{i}" for t in "ab" for i in range(12))


@pytest.mark.slow
def test_two_processes_on_one_session_stay_consistent(tmp_path: Path) -> None:
    res = two_writers(turns=8, folder=tmp_path)
    assert res["ok"], res
    assert res["committed"] == res["session_turns"] == res["user_lines"] == 16


def test_killed_mid_turn_loses_nothing_committed(tmp_path: Path) -> None:
    res = kill_test(kills=1, seed=1, folder=tmp_path)
    assert res["ok"], res["failures"]
    assert res["turns_committed"] > 0


@pytest.mark.slow
def test_twenty_kills(tmp_path: Path) -> None:
    res = kill_test(kills=20, seed=0, folder=tmp_path)
    assert res["ok"], res["failures"]


def test_a_refused_file_leaves_no_connection_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[sqlite3.Connection] = []
    closed: list[sqlite3.Connection] = []

    class Tracked(sqlite3.Connection):
        def close(self) -> None:
            closed.append(self)
            super().close()

    real = sqlite3.connect

    def connect(*args, **kwargs):  # type: ignore[no-untyped-def]
        conn = real(*args, factory=Tracked, **kwargs)
        opened.append(conn)
        return conn

    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    (tmp_path / "junk.db").write_bytes(b"this is not a database at all" * 100)
    monkeypatch.setattr(sqlite3, "connect", connect)
    with pytest.raises(CorruptFileError, match="not a memochat one"):
        MemoStore(other)
    with pytest.raises(CorruptFileError, match="cannot open database"):
        MemoStore(tmp_path / "junk.db")
    assert len(opened) == 2 and closed == opened


def test_export_is_one_snapshot_while_another_writer_commits(tmp_path: Path, store: MemoStore, scripted: Callable[..., ScriptedGenerator],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A session and memo committed by another process while the export runs are either wholly in it
    or wholly out of it: never a memo whose session the export lacks (which import would reject)."""
    _fill(store, scripted, turns=5, user="ana")
    real = store.memos

    def memos_after_another_writer(*args, **kwargs):  # type: ignore[no-untyped-def]
        with MemoStore(store.path) as other:
            other.commit_turn(other.session_state("ana", "late", []), [NewMemo("late", "x", [])], None, ["user: a", "bot: b"])
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "memos", memos_after_another_writer)
    path = tmp_path / "e.jsonl"
    store.export_jsonl(path)
    records = read_export(path)  # raises on a memo of an unknown session
    assert {r["session"] for r in records if r["type"] == "memo"} == {"s1"}
    with MemoStore(tmp_path / "copy.db") as copy:
        assert copy.import_jsonl(path)["memo"] == 2 and copy.check()["ok"]
