"""Measurements for the README: pipeline overhead, store reliability under kills, concurrent writers.

* :func:`overhead`: seconds per turn spent outside model calls (store reads and commit, prefilter,
  prompt assembly and parsing) with N stored memos; model calls are a zero-latency scripted backend
  and the query's embedding time is reported beside it, not inside it.
* :func:`kill_test`: a worker process runs turns (a scripted model that sleeps a random few ms per
  call, so kills land everywhere in a turn) and reports each committed turn; it is SIGKILLed at
  random moments and restarted. After every kill the store is checked: every reported turn present,
  no half-written turn or memo (:meth:`MemoStore.check`).
* :func:`two_writers`: two processes run turns on one session of one database at the same time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from memochat.backends import ScriptedGenerator
from memochat.config import MemoConfig
from memochat.pipeline import MemoChat
from memochat.prefilter import Embedder
from memochat.store import MemoStore, NewMemo
from slimkit.bench import time_fn
from slimkit.retrieval import cosine_topk

WORKER = [sys.executable, "-m", "memochat.bench"]


def _scripted(sleep_ms: float = 0.0, seed: int = 0) -> ScriptedGenerator:
    rng = random.Random(seed)

    def reply(prompt: str, task: str) -> str:
        if sleep_ms:
            time.sleep(rng.uniform(0, sleep_ms) / 1000)
        if task == "writing":
            n = prompt.count("(line ")
            half = max(1, n // 2)
            return json.dumps([{"topic": f"topic {rng.randrange(10**6)}", "summary": "first part", "start": 1, "end": half},
                               {"topic": f"topic {rng.randrange(10**6)}", "summary": "second part", "start": half + 1, "end": n}])  # fmt: skip
        if task == "retrieval":
            return "2#3"
        return "Sure, here is a short answer about that."

    return ScriptedGenerator(reply)


def fill_store(store: MemoStore, user: str, n: int, dim: int = 384, seed: int = 0, embed_model: str = "all-MiniLM-L6-v2") -> None:
    """``n`` memos for ``user`` (random unit embeddings: the ranking cost does not depend on their values)."""
    rng = np.random.default_rng(seed)
    state = store.session_state(user, "filler", [])
    batch = []
    for i in range(n):
        v = rng.standard_normal(dim).astype(np.float32)
        batch.append(NewMemo(f"topic {i}", f"summary of stored conversation part {i} about item {i % 97}",
                             [f"user: line {i}", f"bot: reply {i}"], True, v / np.linalg.norm(v), embed_model))  # fmt: skip
    store.commit_turn(state, batch, None, ["user: filler", "bot: filler"])


def overhead(n_memos: int, prefilter: str = "embedding", turns: int = 30, embedder: Embedder | None = None, seed: int = 0) -> dict[str, Any]:
    """Median pipeline overhead per turn (ms) over ``turns`` turns with ``n_memos`` stored memos."""
    with tempfile.TemporaryDirectory() as tmp:
        store = MemoStore(Path(tmp) / "bench.db")
        fill_store(store, "bench", n_memos, embed_model=embedder.name if embedder else "none", seed=seed)
        cfg = MemoConfig(prefilter=prefilter)
        bot = MemoChat(_scripted(seed=seed), store, cfg, embedder=embedder)
        bot.chat("warm up the caches", user="bench", session="s")
        rows = [bot.chat(f"question number {i} about item {i}", user="bench", session="s") for i in range(turns)]
        topk_ms = None
        idx = bot.index("bench", "s")
        if idx.emb is not None and len(idx.memos) > cfg.prefilter_k:  # the ranking step alone, for the breakdown
            keys, q = idx.emb, idx.emb[0].clone()
            topk_ms = 1000 * time_fn(lambda: cosine_topk(q, keys, cfg.prefilter_k, chunk=keys.shape[0], normalized=True), warmup=2, repeats=15).median_s
        store.close()
    over = sorted(r.overhead_s for r in rows)
    emb = sorted(r.embed_s for r in rows)
    return {"memos": n_memos, "prefilter": prefilter, "turns": turns, "overhead_ms_median": 1000 * over[len(over) // 2],
            "overhead_ms_p90": 1000 * over[int(0.9 * (len(over) - 1))], "embed_ms_median": 1000 * emb[len(emb) // 2],
            "options_shown": rows[-1].options, "cosine_topk_ms": topk_ms}  # fmt: skip


def _run_worker(db: Path, session: str, turns: int, seed: int, sleep_ms: float) -> subprocess.Popen[str]:
    return subprocess.Popen([*WORKER, str(db), session, str(turns), str(seed), str(sleep_ms)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip


def kill_test(kills: int = 20, seed: int = 0, sleep_ms: float = 20.0, folder: str | Path | None = None) -> dict[str, Any]:
    """Kill a turn-running worker ``kills`` times at random moments; check the store after each kill."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        db = Path(tmp) / "kill.db"
        MemoStore(db).close()
        reported = 0
        failures: list[str] = []
        for k in range(kills):
            proc = _run_worker(db, "s", 10**6, seed + k, sleep_ms)
            assert proc.stdout is not None
            ready = proc.stdout.readline()  # imports done, store open: now kill at a random point of some turn
            time.sleep(rng.uniform(0.0, 0.6))
            os.kill(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            if not ready.startswith("READY"):
                failures.append(f"kill {k}: the worker did not start")
            done = [int(line.split()[1]) for line in out.splitlines() if line.startswith("COMMITTED")]
            reported = max([reported, *done])
            with MemoStore(db) as store:
                report = store.check()
                turn = store.session_state("u", "s").turn
            if not report["ok"]:
                failures.append(f"kill {k}: {report['problems']}")
            if turn < reported:
                failures.append(f"kill {k}: turn {turn} < reported {reported}")
        with MemoStore(db) as store:
            final = store.check()
    return {"kills": kills, "turns_committed": reported, "failures": failures, "ok": not failures and final["ok"], "counts": final["counts"]}


def two_writers(turns: int = 40, seed: int = 0, folder: str | Path | None = None) -> dict[str, Any]:
    """Two processes, ``turns`` turns each, on the same session: all ``2 * turns`` turns land, store consistent."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        db = Path(tmp) / "two.db"
        MemoStore(db).close()
        procs = [_run_worker(db, "shared", turns, seed + i, 2.0) for i in range(2)]
        outs = [p.communicate()[0] for p in procs]
        with MemoStore(db) as store:
            report = store.check()
            state = store.session_state("u", "shared")
            user_lines = [x for x in store.lines("u", "shared") if x.startswith("user: turn")]
    committed = sum(o.count("COMMITTED") for o in outs)
    return {"writers": 2, "turns_each": turns, "committed": committed, "session_turns": state.turn, "user_lines": len(user_lines),
            "ok": report["ok"] and state.turn == 2 * turns == len(user_lines), "problems": report["problems"]}  # fmt: skip


def _worker(db: str, session: str, turns: int, seed: int, sleep_ms: float) -> None:
    with MemoStore(db) as store:
        bot = MemoChat(_scripted(sleep_ms, seed), store, MemoConfig(prefilter="none"))
        print("READY", flush=True)
        for i in range(turns):
            res = bot.chat(f"turn {seed}-{i}", user="u", session=session)
            print(f"COMMITTED {res.turn}", flush=True)


if __name__ == "__main__":  # the worker process of kill_test / two_writers
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
