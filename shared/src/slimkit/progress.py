"""Progress bars on stderr, in a module of their own.

Why a separate module: the training loop and the CLIs both want a progress bar, and the CLI
module imports the demo (which imports the training loop). Keeping ``progress`` here, with no
slimkit imports at all, lets every module use it without an import cycle.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["progress"]


def progress(
    iterable: Iterable[T] | None = None,
    total: int | None = None,
    desc: str | None = None,
    disable: bool | None = None,
) -> Any:
    """A tqdm bar on stderr; off when stderr is not a terminal unless ``disable=False``."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=disable, file=sys.stderr, dynamic_ncols=True)
