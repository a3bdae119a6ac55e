from __future__ import annotations

from pathlib import Path

from slimkit.data import digits
from slimkit.evaluate import top1
from slimkit.io import load_into, load_model_files
from slimkit.quickstart import run, tiny_cnn


def test_demo_runs_twice_into_one_folder_and_saves_what_it_reports(tmp_path: Path) -> None:
    first = run(tmp_path, steps=15, seed=0)
    second = run(tmp_path, steps=15, seed=0)  # the demo starts over in its own folder
    assert first == second  # same seed, same figures: the run is deterministic
    tensors, config = load_model_files(tmp_path / "model")
    assert config["val_top1"] == first["val_top1"]
    model = tiny_cnn()
    load_into(model, tensors)
    val = digits("val", seed=0)
    assert top1(model, (val.tensors[0], val.tensors[1])) == first["val_top1"]
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 + 15 // 10  # logged at steps 10 and 15 (log_every=10, last step), nothing doubled
