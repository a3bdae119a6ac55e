"""Token matching and merging, as the 0.1 module exposed it.

The pieces now live by the kernel file rule: the pure-PyTorch references in
:mod:`token_rate.reference`, the Triton kernels in :mod:`token_rate.kernels`, the custom ops and
the dispatching :func:`best_match` / :func:`merge` in :mod:`token_rate.ops`. This module keeps the
0.1 import paths (``token_rate.merge.best_match_reference`` and friends) working; it sits above
all three and adds nothing of its own.
"""

from __future__ import annotations

from token_rate.ops import best_match, merge
from token_rate.reference import (
    _NORM_EPS,
    MERGE_MODES,
    best_match_reference,
    merge_reference,
    merge_source,
    take_rows,
)

__all__ = ["best_match_reference", "merge_reference", "best_match", "merge", "merge_source", "take_rows",
           "MERGE_MODES"]

_ = _NORM_EPS  # re-exported for 0.1 callers
