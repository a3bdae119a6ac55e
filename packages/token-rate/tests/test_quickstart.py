"""The token-rate demo in the default run: short, deterministic, and it writes what it reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from token_rate.flops import analytic_macs
from token_rate.models import digits_vit
from token_rate.patch import model_dims
from token_rate.quickstart import run


def test_demo_short_run_twice_in_one_folder(tmp_path: Path) -> None:
    first = run(tmp_path, train_steps=12, search_steps=2)
    second = run(tmp_path, train_steps=12, search_steps=2)  # the demo starts over in its own folder
    assert first == second  # deterministic end to end
    saved = json.loads((tmp_path / "results.json").read_text())
    rows = {r["name"]: r for r in saved["rows"]}
    assert list(rows)[:2] == ["uncompressed", "diffrate"] and len(rows) == 3
    kept = saved["kept_per_block"]
    assert kept == sorted(kept, reverse=True) and kept[0] <= 65
    # The reported costs are the analytic counts of the tokens kept (and of none removed).
    dims = model_dims(digits_vit())
    assert rows["uncompressed"]["gmacs"] == pytest.approx(analytic_macs(dims) / 1e9, rel=1e-12)
    assert rows["diffrate"]["gmacs"] == pytest.approx(analytic_macs(dims, kept) / 1e9, rel=1e-12)
    assert rows["diffrate"]["gmacs"] == pytest.approx(saved["searched_gmacs"], rel=1e-12)
    assert (tmp_path / "token_groups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "schedule.json").read_text())["_type"] == "Schedule"
