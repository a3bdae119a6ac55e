"""Dynamic neighbour sets: each node keeps its own number of its kNN candidates.

UniDG's abstract says neighbours "of different quantities are dynamically constructed for each
node via a cyclic matching strategy"; the rule itself is not public. Four interchangeable rules
(one interface, :func:`select_neighbours`) reconstruct it from the anchors:

- ``"fixed"``: all k candidates (the fixed-graph ablation; what L-GCN / GCN-V assume);
- ``"mutual"``: a 2-cycle in the directed kNN graph: j in kNN(i) and i in kNN(j);
- ``"rank-growth"``: walk i's ranked list and keep its r-th neighbour j (0-based) only while i
  ranks within j's first ``r + slack + 1`` (a 2-cycle whose return rank may grow with r) or, with
  ``cycle=3``, while a 3-cycle i -> j -> l -> i exists inside the top-k lists; stop at the first
  failure, so the degree is the length of the longest matched prefix;
- ``"reciprocal"``: k-reciprocal expansion (re-ranking / Ada-NETS): R(i,k), the mutual set,
  grows by {j} + R(j, k/2) of each j in R(i,k) when at least ``expand_overlap`` of that set
  already lies in R(i,k) + {i}.

The result is a directed edge list with each edge's cosine; :meth:`NeighbourGraph.degrees` is
the per-node neighbour count whose distribution shows the graph is dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from slimkit.errors import BadInputError
from unidg.config import NEIGHBOUR_RULES

__all__ = ["NeighbourGraph", "back_ranks", "edge_cosine", "select_neighbours"]


@dataclass
class NeighbourGraph:
    """Directed edges ``src -> dst`` (each node's kept neighbours) with their cosine ``sims``."""

    n: int
    src: np.ndarray
    dst: np.ndarray
    sims: np.ndarray
    rule: str

    def degrees(self) -> np.ndarray:
        """Kept neighbours per node."""
        return np.bincount(self.src, minlength=self.n)

    def degree_histogram(self) -> dict[int, int]:
        """``degree -> number of nodes`` (only degrees that occur)."""
        values, counts = np.unique(self.degrees(), return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}

    def adjacency(self, include_self: bool = False) -> sp.csr_matrix:
        """Binary CSR matrix of the kept (directed) edges."""
        a = sp.csr_matrix((np.ones(self.src.size, np.float32), (self.src, self.dst)), shape=(self.n, self.n))
        if include_self:
            a = a + sp.identity(self.n, dtype=np.float32, format="csr")
        a.data[:] = 1.0
        return a


def back_ranks(idx: np.ndarray) -> np.ndarray:
    """``[N, k]``: the 0-based rank of i in the list of ``j = idx[i, r]``, or ``k`` when i is absent there."""
    n, k = idx.shape
    valid = idx >= 0
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    flat = idx.reshape(-1)
    ok = valid.reshape(-1)
    keys = rows[ok] * n + flat[ok]  # key of "flat is in rows' list"
    ranks = np.tile(np.arange(k, dtype=np.int64), n)[ok]
    order = np.argsort(keys, kind="stable")
    keys, ranks = keys[order], ranks[order]
    out = np.full(n * k, k, dtype=np.int64)
    query = flat[ok] * n + rows[ok]  # "rows is in flat's list"
    pos = np.searchsorted(keys, query)
    pos_c = np.minimum(pos, max(keys.size - 1, 0))
    found = (pos < keys.size) & (keys[pos_c] == query) if keys.size else np.zeros(query.size, bool)
    back = np.full(query.size, k, dtype=np.int64)
    back[found] = ranks[pos_c[found]]
    out[ok] = back
    return out.reshape(n, k)


def edge_cosine(x: np.ndarray, src: np.ndarray, dst: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Cosine of each edge from unit-norm features, in chunks (never the N x N matrix)."""
    out = np.empty(src.size, np.float32)
    for s in range(0, src.size, chunk):
        out[s : s + chunk] = np.einsum("ij,ij->i", x[src[s : s + chunk]], x[dst[s : s + chunk]])
    return out


def _mutual_matrix(idx: np.ndarray, back: np.ndarray, depth: int) -> sp.csr_matrix:
    """R(i, depth) as a CSR row per node, plus the node itself."""
    n = idx.shape[0]
    take = (np.arange(idx.shape[1])[None, :] < depth) & (back < depth) & (idx >= 0)
    rows = np.repeat(np.arange(n), idx.shape[1])[take.reshape(-1)]
    cols = idx.reshape(-1)[take.reshape(-1)]
    m = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n, n))
    m = (m + sp.identity(n, dtype=np.float32, format="csr")).tocsr()
    m.data[:] = 1.0
    return m


def _reciprocal(idx: np.ndarray, back: np.ndarray, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    k = idx.shape[1]
    big = _mutual_matrix(idx, back, k)  # R(i,k) + {i}
    half = _mutual_matrix(idx, back, max(1, (k + 1) // 2))  # {j} + R(j,k/2)
    shared = (big @ half.T).multiply(big).tocsr()  # |R(i,k) ∩ R*(j,k/2)| on R(i,k)'s pattern
    shared.eliminate_zeros()
    coo = shared.tocoo()
    sizes = np.asarray(half.sum(1)).reshape(-1)
    accept = coo.data >= overlap * sizes[coo.col] - 1e-9
    chosen = sp.csr_matrix((np.ones(int(accept.sum()), np.float32), (coo.row[accept], coo.col[accept])), shape=big.shape)
    expanded = (big + chosen @ half).tocsr()
    expanded.setdiag(0)
    expanded.eliminate_zeros()
    e = expanded.tocoo()
    return e.row.astype(np.int64), e.col.astype(np.int64)


def _three_cycles(idx: np.ndarray) -> np.ndarray:
    """``[N, k]``: whether some l in kNN(j) has i in kNN(l), for each candidate j = idx[i, r]."""
    n, k = idx.shape
    valid = idx >= 0
    rows = np.repeat(np.arange(n), k)[valid.reshape(-1)]
    a = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, idx[valid])), shape=(n, n))
    two = (a @ a).tocsr()  # two[j, i] > 0: a path j -> l -> i
    i_rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    out = np.zeros(idx.shape, bool)
    out[valid] = np.asarray(two[idx[valid], i_rows[valid]]).reshape(-1) > 0
    return out


def select_neighbours(
    x: np.ndarray, sims: np.ndarray, idx: np.ndarray, rule: str, slack: int = 5, expand_overlap: float = 2 / 3,
    cycle: int = 2,
) -> NeighbourGraph:
    """Each node's kept neighbours under ``rule`` from its kNN list ``(sims, idx)``; ``x`` are the unit features."""
    if rule not in NEIGHBOUR_RULES:
        raise BadInputError(f"neighbour rule must be one of {', '.join(NEIGHBOUR_RULES)}; got {rule!r}")
    if sims.shape != idx.shape or idx.ndim != 2 or idx.shape[0] != x.shape[0]:
        raise BadInputError(f"kNN lists {idx.shape} do not match {x.shape[0]} features")
    n, k = idx.shape
    valid = idx >= 0
    if rule == "fixed":
        keep = valid
    else:
        back = back_ranks(idx)
        if rule == "mutual":
            keep = valid & (back < k)
        elif rule == "rank-growth":
            ok = valid & (back <= np.arange(k)[None, :] + slack)
            if cycle >= 3:  # or a 3-cycle i -> j -> l -> i inside the top-k lists
                ok |= valid & _three_cycles(idx)
            keep = np.cumprod(ok, axis=1).astype(bool)
        else:
            src, dst = _reciprocal(idx, back, expand_overlap)
            return NeighbourGraph(n, src, dst, edge_cosine(x, src, dst), rule)
    rows = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], idx.shape)
    return NeighbourGraph(n, rows[keep], idx[keep], sims[keep].astype(np.float32), rule)
