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


def test_learned_edges_end_to_end(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["train-edges", str(folder), "--k", "10", "--epochs", "5", "-o", str(tmp_path / "edges"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["edges"] > 0 and 0.5 < stats["train_auc"] <= 1
    assert (tmp_path / "edges" / "model.safetensors").is_file() and (tmp_path / "edges" / "config.json").is_file()
    out = tmp_path / "c.json"
    assert main(["cluster", str(folder), "--k", "10", "--edge-score", "learned", "--edge-model", str(tmp_path / "edges"),
                 "--threshold", "0.5", "-o", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["config"]["edge_score"] == "learned" and result["config"]["edge_model"] == str(tmp_path / "edges")
    capsys.readouterr()
    assert main(["eval", str(folder), "--clusters", str(out), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["face"]["bcubed_f"] > 0.5 and 0 < scores["fused"]["bcubed_f"] <= 1


@pytest.mark.parametrize(("argv", "message"), [
    (["cluster", "{v}", "--method", "kmeans", "-o", "{t}/c.json"], "needs --clusters"),
    (["cluster", "{v}", "--k", "0", "-o", "{t}/c.json"], "--k must be >= 1"),
    (["cluster", "{v}", "-o", "{t}/c.txt"], "use one of .json"),
    (["cluster", "{t}/missing", "-o", "{t}/c.json"], "not found"),
    (["eval", "{v}"], "give --clusters"),
    (["cluster", "{v}", "--edge-score", "learned", "-o", "{t}/c.json"], "needs --edge-model"),
    (["cluster", "{v}", "--edge-score", "learned", "--edge-model", "{v}", "-o", "{t}/c.json"], "not an edge classifier folder"),
    (["cluster", "{v}", "--edge-score", "learned", "--edge-model", "{t}/nothing", "-o", "{t}/c.json"], "not found"),
    (["train-edges", "{t}/missing", "-o", "{t}/e"], "not found"),
    (["table", "synthetic", "--seeds", "100", "-o", "{t}/s"], "must not overlap"),
    (["table", "network", "-o", "{t}/s"], "needs --model"),
    (["table", "network", "--model", "{v}", "-o", "{t}/s"], "not a model folder"),
    (["simulate", "--identities", "1", "-o", "{t}/s"], "identities must be >= 2"),
])  # fmt: skip
def test_bad_inputs_exit_2(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                           message: str) -> None:  # fmt: skip
    args = [a.format(v=folder, t=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and message in err[0]
    assert not any(p.name.startswith(("c.", "s")) for p in tmp_path.iterdir())


@pytest.mark.parametrize("doc", [
    {"person": ["a"], "timelines": {}},
    {"person": "ROWS", "timelines": {"x": [[0, 1]]}},
    {"person": "ROWS", "timelines": [1]},
    {"person": "ROWS", "timelines": {"0": [[0, 1, 2]]}},
])  # fmt: skip
def test_malformed_association_file_is_one_line(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                doc: dict[str, object]) -> None:  # fmt: skip
    rows = len(json.loads((folder / "tracks.json").read_text())["tracks"])
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps({**doc, "person": [0] * rows} if doc["person"] == "ROWS" else doc))
    capsys.readouterr()
    for argv in (["eval", str(folder), "--association", str(bad)],
                 ["timeline", str(folder), "--association", str(bad), "-o", str(tmp_path / "t.png")]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not an association file" in err[0]
    assert not (tmp_path / "t.png").exists()


def test_parser_dispatches_everything() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    names = set(sub.choices)  # type: ignore[attr-defined]
    assert {"simulate", "embed", "cluster", "associate", "eval", "timeline", "train", "train-edges", "bench", "table", "demo"} <= names
    assert all(callable(p.get_default("func")) for p in sub.choices.values())  # type: ignore[attr-defined]
