from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from slimkit.errors import BadInputError
from slimkit.plot import save_png

matplotlib = pytest.importorskip("matplotlib")


def _figure():  # type: ignore[no-untyped-def]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def test_save_png_writes_valid_png_atomically(tmp_path: Path) -> None:
    out = save_png(_figure(), tmp_path / "sub" / "plot.png", dpi=50)
    assert out == tmp_path / "sub" / "plot.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # IHDR: width 2in * 50dpi = 100 px, height 50 px
    assert int.from_bytes(data[16:20], "big") == 100 and int.from_bytes(data[20:24], "big") == 50
    assert sorted(p.name for p in out.parent.iterdir()) == ["plot.png"]


def test_save_png_refuses_other_suffixes(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=re.escape(f"cannot write {tmp_path / 'plot.pdf'}: only .png is supported")):
        save_png(_figure(), tmp_path / "plot.pdf")
    assert list(tmp_path.iterdir()) == []


def test_save_png_closes_pyplot_figures_and_keeps_backend(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    fig = plt.figure()
    num = fig.number
    save_png(fig, tmp_path / "p.png")
    assert not plt.fignum_exists(num)
    assert matplotlib.get_backend() == backend
    assert "matplotlib.pyplot" in sys.modules
