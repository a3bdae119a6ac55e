"""The console script end to end on a short synthetic video, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unidg.cli import build_parser, main


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "video"
    assert main(["simulate", "--identities", "4", "--extras", "1", "--duration", "90", "--dim", "32",
                 "--render", "2", "-o", str(out)]) == 0  # fmt: skip
    return out


def test_pipeline(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = np.load(folder / "samples.npz")
    assert samples["face"].shape == (2, 3, 32, 32) and samples["voice"].shape == (2, 1, 32, 32)
    clusters, assoc = tmp_path / "c.json", tmp_path / "a.json"
    assert main(["cluster", str(folder), "-o", str(clusters), "--degree-png", str(tmp_path / "d.png")]) == 0
    assert main(["associate", str(folder), "--clusters", str(clusters), "-o", str(assoc)]) == 0
    capsys.readouterr()
    assert main(["eval", str(folder), "--clusters", str(clusters), "--association", str(assoc), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert 0 < scores["fused"]["bcubed_f"] <= 1 and "timeline_iou_main_mean" in scores
    assert main(["timeline", str(folder), "--association", str(assoc), "-o", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").stat().st_size > 1000 and (tmp_path / "d.png").is_file()
    assert main(["cluster", str(folder), "--method", "kmeans", "--clusters", "3", "-o", str(tmp_path / "k.json")]) == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["cluster", "{v}", "--method", "kmeans", "-o", "{t}/c.json"], "needs --clusters"),
    (["cluster", "{v}", "--k", "0", "-o", "{t}/c.json"], "--k must be >= 1"),
    (["cluster", "{v}", "-o", "{t}/c.txt"], "use one of .json"),
    (["cluster", "{t}/missing", "-o", "{t}/c.json"], "not found"),
    (["eval", "{v}"], "give --clusters"),
    (["simulate", "--identities", "1", "-o", "{t}/s"], "identities must be >= 2"),
])  # fmt: skip
def test_bad_inputs_exit_2(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                           message: str) -> None:  # fmt: skip
    args = [a.format(v=folder, t=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and message in err[0]
    assert not any(p.name.startswith(("c.", "s")) for p in tmp_path.iterdir())


def test_parser_dispatches_everything() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    names = set(sub.choices)  # type: ignore[attr-defined]
    assert {"simulate", "embed", "cluster", "associate", "eval", "timeline", "train", "bench", "table", "demo"} <= names
    assert all(callable(p.get_default("func")) for p in sub.choices.values())  # type: ignore[attr-defined]
