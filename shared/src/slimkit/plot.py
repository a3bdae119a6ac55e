"""Write a matplotlib figure as a PNG, atomically, and close it.

Why: plots are outputs like any other, so they follow the same rules: written through
:func:`slimkit.io.atomic_path` (an interrupted run never leaves a half-written PNG), only
in the format the name promises, and rendered with Agg so no display is needed. Rendering
attaches an Agg canvas to the figure instead of calling ``matplotlib.use``, so the global
pyplot backend of the calling program is left alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from slimkit.errors import BadInputError
from slimkit.io import atomic_path

__all__ = ["save_png"]


def save_png(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Render ``fig`` (a ``matplotlib.figure.Figure``) to ``path`` as PNG, atomically; closes the figure.

    A path whose suffix is not ``.png`` is a :class:`BadInputError` (nothing is written).
    """
    target = Path(path)
    try:
        if target.suffix.lower() != ".png":
            raise BadInputError(f"cannot write {target}: only .png is supported")
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)  # attaches itself as fig.canvas: Agg rendering, no global backend switch
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        _close(fig)
    return target


def _close(fig: Any) -> None:
    # A figure made by pyplot is also held by pyplot's figure manager; let pyplot forget it.
    # A figure made with ``Figure()`` is not, and pyplot is not imported just to close it.
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
