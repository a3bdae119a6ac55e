"""The persistent memory: users, sessions, dialogue lines and memos in one SQLite file.

Why SQLite: one file, atomic transactions and safe concurrent access from several processes.
The database runs in WAL mode; a turn is committed in one ``BEGIN IMMEDIATE`` transaction (its
memos, the buffer trim and the two dialogue lines), so a process killed mid-turn leaves either the
whole turn or none of it, and never half a memo. Two processes working on the same session are
serialised by the session's turn counter (optimistic concurrency): a commit made from a stale turn
raises :class:`TurnConflict` and the caller recomputes the turn.

The schema carries a version in ``meta``; :data:`MIGRATIONS` upgrade older files in place.

The memo browser (``memochat.web``) reads and corrects memos through the same connection: edits and
deletions are single transactions that bump the user's ``memo_version``, so every cached retrieval
index reloads before the next turn.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import atomic_write

#: (version, SQL) in order; a database at version v gets every migration after v.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE users (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
            memo_version INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE sessions (
            id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            name TEXT NOT NULL, turn INTEGER NOT NULL DEFAULT 0, buffer_from INTEGER NOT NULL DEFAULT 0,
            UNIQUE (user_id, name));
        CREATE TABLE lines (
            session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL, text TEXT NOT NULL, turn INTEGER NOT NULL,
            PRIMARY KEY (session_id, seq));
        CREATE TABLE memos (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            topic TEXT NOT NULL, summary TEXT NOT NULL, dialogs TEXT NOT NULL, turn INTEGER NOT NULL,
            retrievable INTEGER NOT NULL DEFAULT 1);
        CREATE INDEX memos_by_user ON memos (user_id, id);
    """),
    (2, """
        ALTER TABLE memos ADD COLUMN embedding BLOB;
        ALTER TABLE memos ADD COLUMN embed_model TEXT;
    """),
    (3, """
        ALTER TABLE memos ADD COLUMN created_at REAL;
        ALTER TABLE memos ADD COLUMN updated_at REAL;
    """),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
EXPORT_KIND = "memochat-export"
#: Longest topic / summary the store accepts from an edit (characters).
MAX_TOPIC, MAX_SUMMARY = 200, 4000
_MEMO_COLUMNS = ("m.id, u.name, s.name, m.topic, m.summary, m.dialogs, m.turn, m.retrievable, m.created_at, m.updated_at")


class TurnConflict(Exception):
    """Another writer committed a turn of this session first; recompute and try again."""


class NotFound(BadInputError):
    """A user, session or memo that the store does not hold (a 404 for the web API, exit 2 for the CLI)."""


@dataclass
class Memo:
    """One stored memo: a topic, its summary and the dialogue lines it covers."""

    id: int
    user: str
    session: str
    topic: str
    summary: str
    dialogs: list[str]
    turn: int
    retrievable: bool = True
    created_at: float | None = None  # unix seconds; None for memos written before schema 3
    updated_at: float | None = None  # last edit through the memo browser, if any
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def option(self) -> str:
        """How the retrieval prompt lists it: ``topic. summary``."""
        return f"{self.topic}. {self.summary}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "session": self.session, "topic": self.topic,
                "summary": self.summary, "dialogs": list(self.dialogs), "turn": self.turn,
                "retrievable": self.retrievable, "created_at": self.created_at, "updated_at": self.updated_at}  # fmt: skip


@dataclass
class NewMemo:
    """A memo written during a turn, committed with it."""

    topic: str
    summary: str
    dialogs: list[str]
    retrievable: bool = True
    embedding: np.ndarray | None = None
    embed_model: str | None = None


@dataclass
class SessionState:
    """A session as read at the start of a turn."""

    user: str
    session: str
    user_id: int
    session_id: int
    turn: int
    buffer_from: int
    next_seq: int
    buffer: list[str]


class MemoStore:
    """One connection to a memochat database (created and migrated on open)."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", timeout: float = 30.0) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise BadInputError(f"database {self.path} is a folder, expected a file")
        if not self.path.parent.exists():
            raise BadInputError(f"cannot create database {self.path}: folder {self.path.parent} does not exist")
        if synchronous not in ("NORMAL", "FULL"):
            raise BadInputError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self._lock = threading.RLock()
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise CorruptFileError(f"cannot open database {self.path}: {exc}") from exc
        try:
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self.conn.execute(f"PRAGMA synchronous = {synchronous}")
            self._migrate()
        except BaseException as exc:  # a refused file leaves no open connection behind
            self.conn.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise CorruptFileError(f"cannot open database {self.path}: {exc}") from exc
            raise
        self.journal_mode = str(mode)

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> MemoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed whole or rolled back whole."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same committed state (WAL snapshot)."""
        with self._lock:
            if self.conn.in_transaction:
                yield self.conn
                return
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                self.conn.execute("COMMIT")

    def schema_version(self) -> int:
        has_meta = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return 0
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        with self._write() as c:
            current = self.schema_version()
            if current == 0 and c.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]:
                raise CorruptFileError(f"{self.path} is an SQLite database but not a memochat one (no schema version)")
            if current > SCHEMA_VERSION:
                raise BadInputError(f"database {self.path} has schema version {current}, newer than this memochat ({SCHEMA_VERSION}); upgrade memochat")
            for version, sql in MIGRATIONS:
                if version > current:
                    for statement in (s.strip() for s in sql.split(";")):
                        if statement:
                            c.execute(statement)
                    c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(version),))

    # ------------------------------------------------------------------ sessions

    def _ids(self, c: sqlite3.Connection, user: str, session: str, seed_lines: list[str]) -> tuple[int, int]:
        c.execute("INSERT OR IGNORE INTO users (name) VALUES (?)", (user,))
        user_id = int(c.execute("SELECT id FROM users WHERE name=?", (user,)).fetchone()[0])
        row = c.execute("SELECT id FROM sessions WHERE user_id=? AND name=?", (user_id, session)).fetchone()
        if row is None:
            cur = c.execute("INSERT INTO sessions (user_id, name) VALUES (?, ?)", (user_id, session))
            session_id = int(cur.lastrowid or 0)
            c.executemany("INSERT INTO lines (session_id, seq, text, turn) VALUES (?, ?, ?, 0)",
                          [(session_id, i, line) for i, line in enumerate(seed_lines)])  # fmt: skip
            return user_id, session_id
        return user_id, int(row[0])

    def session_state(self, user: str, session: str, seed_lines: list[str] | None = None) -> SessionState:
        """The session's turn counter and recent buffer, creating user and session (with ``seed_lines``) if new."""
        if not isinstance(user, str) or not user or not isinstance(session, str) or not session:
            raise BadInputError("user and session must be non-empty strings")
        with self._lock:
            row = self.conn.execute(
                "SELECT u.id, s.id, s.turn, s.buffer_from FROM sessions s JOIN users u ON u.id = s.user_id "
                "WHERE u.name=? AND s.name=?", (user, session)).fetchone()  # fmt: skip
            if row is None:
                with self._write() as c:
                    self._ids(c, user, session, list(seed_lines or []))
                return self.session_state(user, session, seed_lines)
            user_id, session_id, turn, buffer_from = (int(v) for v in row)
            rows = self.conn.execute("SELECT seq, text FROM lines WHERE session_id=? AND seq>=? ORDER BY seq",
                                     (session_id, buffer_from)).fetchall()  # fmt: skip
            last = self.conn.execute("SELECT max(seq) FROM lines WHERE session_id=?", (session_id,)).fetchone()[0]
        next_seq = 0 if last is None else int(last) + 1
        return SessionState(user, session, user_id, session_id, turn, buffer_from, next_seq, [r[1] for r in rows])

    def commit_turn(self, state: SessionState, memos: list[NewMemo], keep_lines: int | None,
                    new_lines: list[str]) -> list[int]:  # fmt: skip
        """Commit one turn atomically: its memos, the buffer trimmed to its last ``keep_lines``
        (``None``: no trim) and ``new_lines``. Raises :class:`TurnConflict` when the session moved on."""
        with self._write() as c:
            cur = c.execute("UPDATE sessions SET turn = turn + 1 WHERE id=? AND turn=?", (state.session_id, state.turn))
            if cur.rowcount != 1:
                raise TurnConflict(f"session {state.user}/{state.session} moved past turn {state.turn}")
            turn = state.turn + 1
            ids = []
            now = time.time()
            for m in memos:
                blob = None if m.embedding is None else np.asarray(m.embedding, dtype=np.float32).tobytes()
                cur = c.execute(
                    "INSERT INTO memos (user_id, session_id, topic, summary, dialogs, turn, retrievable, embedding, embed_model, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (state.user_id, state.session_id, m.topic, m.summary, json.dumps(m.dialogs), turn,
                     int(m.retrievable), blob, m.embed_model, now))  # fmt: skip
                ids.append(int(cur.lastrowid or 0))
            if keep_lines is not None:
                buffer_from = max(state.buffer_from, state.next_seq - keep_lines)
                c.execute("UPDATE sessions SET buffer_from=? WHERE id=?", (buffer_from, state.session_id))
            c.executemany("INSERT INTO lines (session_id, seq, text, turn) VALUES (?, ?, ?, ?)",
                          [(state.session_id, state.next_seq + i, text, turn) for i, text in enumerate(new_lines)])  # fmt: skip
        return ids

    # ------------------------------------------------------------------ reading

    def memo_stamp(self, user: str, session: str | None = None) -> tuple[int, int, int]:
        """``(memo_version, max id, count)`` of the memos in scope: cheap change detection for caches."""
        with self._lock:
            row = self.conn.execute("SELECT id, memo_version FROM users WHERE name=?", (user,)).fetchone()
            if row is None:
                return (0, 0, 0)
            if session is None:
                agg = self.conn.execute("SELECT max(id), count(*) FROM memos WHERE user_id=?", (row[0],)).fetchone()
            else:
                agg = self.conn.execute(
                    "SELECT max(m.id), count(*) FROM memos m JOIN sessions s ON s.id = m.session_id "
                    "WHERE m.user_id=? AND s.name=?", (row[0], session)).fetchone()  # fmt: skip
        return (int(row[1]), int(agg[0] or 0), int(agg[1]))

    def memos(self, user: str | None = None, session: str | None = None, after_id: int = 0,
              with_embeddings: bool = False) -> list[Memo]:  # fmt: skip
        """Memos in id order, of one user (and session) or of everyone."""
        sql = (f"SELECT {_MEMO_COLUMNS}, "
               + ("m.embedding" if with_embeddings else "NULL")
               + " FROM memos m JOIN users u ON u.id = m.user_id JOIN sessions s ON s.id = m.session_id WHERE m.id > ?")  # fmt: skip
        args: list[Any] = [after_id]
        if user is not None:
            sql += " AND u.name = ?"
            args.append(user)
        if session is not None:
            sql += " AND s.name = ?"
            args.append(session)
        with self._lock:
            rows = self.conn.execute(sql + " ORDER BY m.id", args).fetchall()
        return [_row_memo(r) for r in rows]

    def memo(self, memo_id: int) -> Memo:
        with self._lock:
            row = self.conn.execute(f"SELECT {_MEMO_COLUMNS}, NULL FROM memos m JOIN users u ON u.id = m.user_id "
                                    "JOIN sessions s ON s.id = m.session_id WHERE m.id = ?", (memo_id,)).fetchone()  # fmt: skip
        if row is None:
            raise NotFound(f"no memo with id {memo_id}")
        return _row_memo(row)

    def find_memos(self, user: str, text: str = "", session: str | None = None) -> list[Memo]:
        """The user's memos whose topic, summary or dialogue lines contain ``text`` (case-insensitive,
        Unicode-aware: done here rather than with SQL ``LIKE``, which folds ASCII only)."""
        self.user_id(user)
        memos = self.memos(user, session)
        needle = text.strip().casefold()
        if not needle:
            return memos
        return [m for m in memos if needle in "\n".join([m.topic, m.summary, *m.dialogs]).casefold()]

    def update_memo(self, memo_id: int, topic: str | None = None, summary: str | None = None) -> Memo:
        """Correct a memo's topic and/or summary in one transaction. The stored embedding is dropped
        (it described the old text; the prefilter recomputes it) and the user's ``memo_version`` is
        bumped so cached retrieval indexes reload before the next turn."""
        changes: dict[str, str] = {}
        if topic is not None:
            changes["topic"] = _clean_text("topic", topic, MAX_TOPIC, allow_empty=False)
        if summary is not None:
            changes["summary"] = _clean_text("summary", summary, MAX_SUMMARY, allow_empty=True)
        if not changes:
            raise BadInputError("nothing to change: give a topic and/or a summary")
        with self._write() as c:
            row = c.execute("SELECT user_id FROM memos WHERE id=?", (memo_id,)).fetchone()
            if row is None:
                raise NotFound(f"no memo with id {memo_id}")
            sets = ", ".join(f"{k}=?" for k in changes)
            c.execute(f"UPDATE memos SET {sets}, embedding=NULL, embed_model=NULL, updated_at=? WHERE id=?",
                      [*changes.values(), time.time(), memo_id])  # fmt: skip
            c.execute("UPDATE users SET memo_version = memo_version + 1 WHERE id=?", (row[0],))
        return self.memo(memo_id)

    def user_id(self, user: str) -> int:
        """The id of an existing user; :class:`NotFound` names it otherwise."""
        with self._lock:
            row = self.conn.execute("SELECT id FROM users WHERE name=?", (user,)).fetchone()
        if row is None:
            raise NotFound(f"no user named {user!r}")
        return int(row[0])

    def users(self) -> list[dict[str, Any]]:
        """Every user with their session and memo counts, by name."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT u.name, (SELECT count(*) FROM sessions s WHERE s.user_id = u.id), "
                "(SELECT count(*) FROM memos m WHERE m.user_id = u.id) FROM users u ORDER BY u.name").fetchall()  # fmt: skip
        return [{"name": r[0], "sessions": int(r[1]), "memos": int(r[2])} for r in rows]

    def set_embeddings(self, items: list[tuple[int, np.ndarray]], model: str) -> None:
        """Store embeddings computed later for memos written without one."""
        with self._write() as c:
            c.executemany("UPDATE memos SET embedding=?, embed_model=? WHERE id=?",
                          [(np.asarray(v, dtype=np.float32).tobytes(), model, i) for i, v in items])  # fmt: skip

    def lines(self, user: str, session: str | None = None) -> list[str]:
        """Every dialogue line of a session (or of all the user's sessions, in session order)."""
        sql = ("SELECT l.text FROM lines l JOIN sessions s ON s.id = l.session_id JOIN users u ON u.id = s.user_id "
               "WHERE u.name=?")  # fmt: skip
        args: list[Any] = [user]
        if session is not None:
            sql += " AND s.name=?"
            args.append(session)
        with self._lock:
            return [r[0] for r in self.conn.execute(sql + " ORDER BY s.id, l.seq", args).fetchall()]

    def sessions(self, user: str | None = None) -> list[dict[str, Any]]:
        """Sessions (of one existing user, or of everyone) with their turn and memo counts."""
        where, args = "", []
        if user is not None:
            where, args = " WHERE u.id = ?", [self.user_id(user)]
        with self._lock:
            rows = self.conn.execute(
                "SELECT u.name, s.name, s.turn, (SELECT count(*) FROM memos m WHERE m.session_id = s.id) "
                f"FROM sessions s JOIN users u ON u.id = s.user_id{where} ORDER BY u.name, s.id", args).fetchall()  # fmt: skip
        return [{"user": r[0], "session": r[1], "turns": int(r[2]), "memos": int(r[3])} for r in rows]

    # ------------------------------------------------------------------ deleting

    def delete_memos(self, ids: list[int]) -> int:
        with self._write() as c:
            users = {r[0] for r in c.execute(f"SELECT user_id FROM memos WHERE id IN ({','.join('?' * len(ids))})", ids)}
            n = c.execute(f"DELETE FROM memos WHERE id IN ({','.join('?' * len(ids))})", ids).rowcount
            c.executemany("UPDATE users SET memo_version = memo_version + 1 WHERE id=?", [(u,) for u in users])
        return int(n)

    def delete(self, user: str, session: str | None = None) -> int:
        """Delete a user (everything of theirs) or one session (its lines and memos); returns memos removed."""
        with self._write() as c:
            row = c.execute("SELECT id FROM users WHERE name=?", (user,)).fetchone()
            if row is None:
                raise NotFound(f"no user named {user!r}")
            if session is None:
                n = c.execute("SELECT count(*) FROM memos WHERE user_id=?", (row[0],)).fetchone()[0]
                c.execute("DELETE FROM users WHERE id=?", (row[0],))
                return int(n)
            srow = c.execute("SELECT id FROM sessions WHERE user_id=? AND name=?", (row[0], session)).fetchone()
            if srow is None:
                raise NotFound(f"user {user!r} has no session named {session!r}")
            n = c.execute("SELECT count(*) FROM memos WHERE session_id=?", (srow[0],)).fetchone()[0]
            c.execute("DELETE FROM sessions WHERE id=?", (srow[0],))
            c.execute("UPDATE users SET memo_version = memo_version + 1 WHERE id=?", (row[0],))
        return int(n)

    # ------------------------------------------------------------------ export / import / check

    def export_records(self, user: str | None = None) -> list[dict[str, Any]]:
        """Everything (or one existing user's users / sessions / lines / memos) as import records."""
        where, args = "", []
        if user is not None:
            where, args = " WHERE u.id = ?", [self.user_id(user)]
        with self._snapshot():  # users, sessions, lines and memos of one state, whatever other writers do meanwhile
            out: list[dict[str, Any]] = [{"type": EXPORT_KIND, "schema": SCHEMA_VERSION}]
            out += [{"type": "user", "name": r[0]} for r in self.conn.execute(f"SELECT name FROM users u{where} ORDER BY id", args)]
            for r in self.conn.execute("SELECT u.name, s.name, s.turn, s.buffer_from, s.id FROM sessions s "
                                       f"JOIN users u ON u.id = s.user_id{where} ORDER BY s.id", args).fetchall():  # fmt: skip
                out.append({"type": "session", "user": r[0], "name": r[1], "turn": r[2], "buffer_from": r[3]})
                for seq, text, turn in self.conn.execute("SELECT seq, text, turn FROM lines WHERE session_id=? ORDER BY seq", (r[4],)):
                    out.append({"type": "line", "user": r[0], "session": r[1], "seq": seq, "text": text, "turn": turn})
            for m in self.memos(user):
                d = m.to_dict()
                d.pop("id")
                out.append({"type": "memo", **d})
        return out

    def export_jsonl(self, path: str | Path, user: str | None = None) -> int:
        records = self.export_records(user)
        with atomic_write(path) as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return len(records)

    def import_jsonl(self, path: str | Path) -> dict[str, int]:
        """Add an export's users, sessions, lines and memos. The file is checked whole first: one bad
        line, or a session that already exists here, rejects it and nothing is written."""
        records = read_export(path)
        sessions = [r for r in records if r["type"] == "session"]
        with self._write() as c:
            for s in sessions:
                exists = c.execute("SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.name=? AND s.name=?",
                                   (s["user"], s["name"])).fetchone()  # fmt: skip
                if exists:
                    raise BadInputError(f"{path}: session {s['user']}/{s['name']} already exists in {self.path}; nothing imported")
            ids: dict[tuple[str, str], tuple[int, int]] = {}
            for r in records:
                if r["type"] == "user":
                    c.execute("INSERT OR IGNORE INTO users (name) VALUES (?)", (r["name"],))
                elif r["type"] == "session":
                    uid, sid = self._ids(c, r["user"], r["name"], [])
                    c.execute("UPDATE sessions SET turn=?, buffer_from=? WHERE id=?", (r["turn"], r["buffer_from"], sid))
                    ids[(r["user"], r["name"])] = (uid, sid)
                elif r["type"] == "line":
                    uid, sid = ids[(r["user"], r["session"])]
                    c.execute("INSERT INTO lines (session_id, seq, text, turn) VALUES (?, ?, ?, ?)", (sid, r["seq"], r["text"], r["turn"]))
                elif r["type"] == "memo":
                    uid, sid = ids[(r["user"], r["session"])]
                    c.execute("INSERT INTO memos (user_id, session_id, topic, summary, dialogs, turn, retrievable, created_at, updated_at) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (uid, sid, r["topic"], r["summary"], json.dumps(r["dialogs"]), r["turn"], int(r["retrievable"]),
                               r.get("created_at"), r.get("updated_at")))  # fmt: skip
        counts = {k: sum(r["type"] == k for r in records) for k in ("user", "session", "line", "memo")}
        return counts

    def check(self) -> dict[str, Any]:
        """Consistency of the whole file: SQLite's integrity check, then memochat's invariants
        (contiguous line numbers, one user and one bot line per turn, whole memos, buffers in range)."""
        problems: list[str] = []
        with self._lock:
            integrity = self.conn.execute("PRAGMA integrity_check").fetchone()[0]
            if integrity != "ok":
                problems.append(f"integrity_check: {integrity}")
            for sid, turn, buffer_from in self.conn.execute("SELECT id, turn, buffer_from FROM sessions").fetchall():
                seqs = [r[0] for r in self.conn.execute("SELECT seq FROM lines WHERE session_id=? ORDER BY seq", (sid,))]
                if seqs != list(range(len(seqs))):
                    problems.append(f"session {sid}: line numbers not contiguous")
                per_turn = self.conn.execute("SELECT turn, count(*) FROM lines WHERE session_id=? AND turn > 0 GROUP BY turn", (sid,)).fetchall()
                if sorted(t for t, _ in per_turn) != list(range(1, turn + 1)) or any(n != 2 for _, n in per_turn):
                    problems.append(f"session {sid}: {turn} turns but lines for {len(per_turn)}")
                if buffer_from > len(seqs):
                    problems.append(f"session {sid}: buffer starts past the last line")
            for mid, topic, dialogs, turn, sid in self.conn.execute("SELECT id, topic, dialogs, turn, session_id FROM memos").fetchall():
                try:
                    ok = isinstance(json.loads(dialogs), list)
                except json.JSONDecodeError:
                    ok = False
                stored_turn = self.conn.execute("SELECT turn FROM sessions WHERE id=?", (sid,)).fetchone()
                if not ok or not topic or stored_turn is None or turn > stored_turn[0]:
                    problems.append(f"memo {mid}: incomplete")
            counts = {t: int(self.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in ("users", "sessions", "lines", "memos")}
        return {"ok": not problems, "problems": problems, "counts": counts, "schema_version": self.schema_version()}


def _row_memo(r: Any) -> Memo:
    """A :class:`Memo` from a ``_MEMO_COLUMNS, embedding`` row."""
    return Memo(int(r[0]), r[1], r[2], r[3], r[4], json.loads(r[5]), int(r[6]), bool(r[7]), created_at=r[8], updated_at=r[9],
                embedding=None if r[10] is None else np.frombuffer(r[10], dtype=np.float32))  # fmt: skip


def _clean_text(name: str, value: Any, limit: int, allow_empty: bool) -> str:
    """A memo field from an edit: a string, stripped, within ``limit`` characters, non-empty if required."""
    if not isinstance(value, str):
        raise BadInputError(f"{name} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value and not allow_empty:
        raise BadInputError(f"{name} must not be empty")
    if len(value) > limit:
        raise BadInputError(f"{name} is {len(value)} characters long; at most {limit} are allowed")
    return value


def _need(rec: dict[str, Any], where: str, **types: type | tuple[type, ...]) -> None:
    for key, typ in types.items():
        value = rec.get(key)
        if not isinstance(value, typ) or (isinstance(value, bool) and typ is int):
            raise BadInputError(f"{where}: field {key!r} must be {getattr(typ, '__name__', typ)}, got {value!r}; nothing imported")


def read_export(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSONL export, validated (types, references, order); BadInputError names the line."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"import file not found: {p}")
    records: list[dict[str, Any]] = []
    users: set[str] = set()
    sessions: set[tuple[str, str]] = set()
    seqs: set[tuple[str, str, int]] = set()
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{p} is not UTF-8 text ({exc})") from exc
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{p}:{n}"
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CorruptFileError(f"{where}: not valid JSON ({exc.msg}); nothing imported") from exc
        if not isinstance(rec, dict) or "type" not in rec:
            raise BadInputError(f"{where}: each line must be a JSON object with a 'type'; nothing imported")
        kind = rec["type"]
        if n == 1 or not records:
            if kind != EXPORT_KIND:
                raise BadInputError(f"{where}: not a memochat export (first line must have type {EXPORT_KIND!r}); nothing imported")
            _need(rec, where, schema=int)
            if rec["schema"] > SCHEMA_VERSION:
                raise BadInputError(f"{where}: export schema {rec['schema']} is newer than this memochat ({SCHEMA_VERSION})")
        elif kind == "user":
            _need(rec, where, name=str)
            users.add(rec["name"])
        elif kind == "session":
            _need(rec, where, user=str, name=str, turn=int, buffer_from=int)
            if rec["user"] not in users:
                raise BadInputError(f"{where}: session of unknown user {rec['user']!r}; nothing imported")
            if (rec["user"], rec["name"]) in sessions:
                raise BadInputError(f"{where}: session {rec['user']}/{rec['name']} appears twice; nothing imported")
            sessions.add((rec["user"], rec["name"]))
        elif kind in ("line", "memo"):
            _need(rec, where, user=str, session=str, turn=int)
            if (rec["user"], rec["session"]) not in sessions:
                raise BadInputError(f"{where}: {kind} of unknown session {rec['user']}/{rec['session']}; nothing imported")
            if kind == "line":
                _need(rec, where, seq=int, text=str)
                if (rec["user"], rec["session"], rec["seq"]) in seqs:
                    raise BadInputError(f"{where}: line {rec['seq']} of session {rec['user']}/{rec['session']} appears twice; nothing imported")
                seqs.add((rec["user"], rec["session"], rec["seq"]))
            else:
                _need(rec, where, topic=str, summary=str, dialogs=list, retrievable=bool)
                if not all(isinstance(d, str) for d in rec["dialogs"]):
                    raise BadInputError(f"{where}: dialogs must be a list of strings; nothing imported")
                for stamp in ("created_at", "updated_at"):  # schema 3; absent from older exports
                    if rec.get(stamp) is not None:
                        _need(rec, where, **{stamp: (int, float)})
        else:
            raise BadInputError(f"{where}: unknown record type {kind!r}; nothing imported")
        records.append(rec)
    if not records:
        raise BadInputError(f"{p} is empty; nothing imported")
    return records
