"""N:M pattern naming and validation.

Convention (as in SR-STE, SpRe and Bi-Mask): ``n`` is the number of **kept** (non-zero)
weights in every group of ``m`` consecutive weights. Hubara et al. count zeros instead; this
package never does, so ``"2:4"`` always means "2 non-zeros out of 4".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from slimkit.errors import BadInputError

#: Largest group size the Triton kernels (and therefore this package) accept.
MAX_M = 32

_PATTERN_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class NMPattern:
    """``n`` kept weights out of every ``m`` consecutive weights along the reduction axis."""

    n: int
    m: int

    def __post_init__(self) -> None:
        validate_nm(self.n, self.m)

    @property
    def density(self) -> float:
        return self.n / self.m

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def validate_nm(n: Any, m: Any) -> None:
    """Raise a one-line BadInputError unless ``1 <= n <= m <= MAX_M`` (integers)."""
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise BadInputError(f"N:M pattern needs integers, got n={n!r}, m={m!r}")
    if m < 1 or m > MAX_M:
        raise BadInputError(f"M must be in [1, {MAX_M}] (the kernels' limit), got {n}:{m}")
    if n < 1 or n > m:
        raise BadInputError(f"N (weights kept per group) must be in [1, M={m}], got {n}:{m}")


def parse_pattern(spec: Any) -> NMPattern:
    """Accept ``"2:4"``, ``(2, 4)``, ``{"n": 2, "m": 4}`` or an :class:`NMPattern`."""
    if isinstance(spec, NMPattern):
        return spec
    if isinstance(spec, str):
        match = _PATTERN_RE.match(spec)
        if match is None:
            raise BadInputError(f"cannot parse N:M pattern {spec!r}; write it as 'N:M', e.g. '2:4'")
        return NMPattern(int(match.group(1)), int(match.group(2)))
    if isinstance(spec, dict) and set(spec) == {"n", "m"}:
        return NMPattern(spec["n"], spec["m"])
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return NMPattern(spec[0], spec[1])
    raise BadInputError(f"cannot parse N:M pattern {spec!r}; use 'N:M', (n, m) or {{'n': .., 'm': ..}}")
