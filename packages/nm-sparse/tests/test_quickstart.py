"""nm_sparse.quickstart: the demo."""

from __future__ import annotations

from pathlib import Path

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_quickstart_runs_and_writes_files(tmp_path: Path) -> None:
    from nm_sparse.quickstart import run

    out = run(tmp_path, steps=15)
    assert set(out) >= {"what", "figure", "files"}
    assert out["pattern_valid"] is True
    assert out["sparsity_of_checked_layers"] == pytest.approx(0.5)
    for name in out["files"]:
        assert Path(name).is_file()
    assert Path(out["heatmap"]).read_bytes()[:8] == PNG_MAGIC
    assert "val top-1" in out["figure"] and "pattern exact" in out["figure"]
    assert out["val_top1_sparse"] == pytest.approx(out["val_top1_deployed"], abs=0.01)
