"""The demo trains one MultiQuant network, reports every bit-width, saves, reloads exactly and draws the plot."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from arbitrary_quant.quickstart import run


def test_demo_end_to_end(tmp_path: Path) -> None:
    result = run(tmp_path, steps=20)
    assert [r["bits"] for r in result["rows"]] == [2, 4, 6, 8]
    assert result["reload_exact"] is True and "reload exact" in result["figure"]
    assert all(0.0 <= r["top1"] <= 1.0 for r in result["rows"])
    one_branch = result["rows"][0]["body_macs"]
    assert [r["body_bops"] for r in result["rows"]] == [k * k * one_branch for k in (2, 4, 6, 8)]
    files = [Path(f) for f in result["files"]]
    assert [f.name for f in files] == ["model.safetensors", "config.json", "top1_per_bits.png"]
    assert all(f.is_file() and f.stat().st_size > 0 for f in files)
    with Image.open(files[2]) as png:
        assert png.format == "PNG" and png.size[0] > 100
