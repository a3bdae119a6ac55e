"""The any-bit table: every (method, bit-width) row, mean ± std over seeds, files equal to the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arbitrary_quant.table import MultiBitTableSettings, multibit_table
from slimkit.bench import mean_std
from slimkit.errors import BadInputError


def test_rows_cover_every_method_and_bit_width(tmp_path: Path) -> None:
    settings = MultiBitTableSettings(steps=2, bits=(2, 8), batch_size=16)
    res = multibit_table(settings, seeds=(0, 1), output=tmp_path, show_progress=False)
    keys = [(r["method"], r["bits"]) for r in res["rows"]]
    assert keys == [(m, b) for m in ("multiquant", "any-precision", "lsq") for b in (2, 8)]
    for row in res["rows"]:
        assert len(row["top1"]) == 2 and (row["top1_mean"], row["top1_std"]) == mean_std(row["top1"])
        assert all(0.0 <= a <= 1.0 for a in row["top1"])
    assert len(res["runs"]) == 2 * 3 * 2
    assert res["command"].startswith("arbitrary-quant table --data digits --image-size 16 --bits 2,8 ")
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == res["rows"]
    assert (tmp_path / "table.md").read_text().strip() == res["markdown"]
    assert res["markdown"].splitlines()[0] == "| method | 2-bit | 8-bit |"


def test_bad_table_requests() -> None:
    with pytest.raises(BadInputError, match="at least one seed"):
        multibit_table(seeds=(), show_progress=False)
    with pytest.raises(BadInputError, match="unknown method 'pact'"):
        multibit_table(methods=("pact",), show_progress=False)
    with pytest.raises(BadInputError, match="steps and batch size"):
        MultiBitTableSettings(steps=0)
