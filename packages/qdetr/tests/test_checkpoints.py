"""Model folders record the COCO categories they were trained on, and eval refuses a folder with other ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from qdetr.api import quantize
from qdetr.checkpoints import META_FILE, check_categories, load_model_folder, save_model_folder
from qdetr.cli import main
from qdetr.config import QDetrConfig
from qdetr.data import CocoDetectionSet, make_shapes
from qdetr.models import load_detr, tiny_detr
from slimkit.errors import BadInputError, CorruptFileError

CATEGORIES = [(1, "square"), (2, "disk"), (3, "triangle")]  # make_shapes' ids and names, in label order


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/`` (4 shapes images), ``model/`` (a tiny FP DETR recording data's categories), ``bare/`` (the same
    model saved without them, as qdetr 0.1.0 did) and ``hf/`` (a plain ``save_pretrained`` folder)."""
    root = tmp_path_factory.mktemp("categories")
    make_shapes(root / "data", 4, seed=0)
    torch.manual_seed(0)
    model = tiny_detr(num_labels=3)
    save_model_folder(root / "bare", model, None, {"method": "fp"})
    model.save_pretrained(str(root / "hf"))
    categories = CocoDetectionSet(root / "data").label_categories
    assert categories == CATEGORIES
    save_model_folder(root / "model", model, None, {"method": "fp"}, categories=categories)
    return root


def _edited(src: Path, dst: Path, edit: Any) -> Path:
    """A copy of the COCO folder ``src`` with ``edit(annotations)`` applied."""
    shutil.copytree(src, dst)
    ann = json.loads((dst / "annotations.json").read_text())
    edit(ann)
    (dst / "annotations.json").write_text(json.dumps(ann))
    return dst


def _swap_names(ann: dict[str, Any]) -> None:
    names = {c["id"]: c["name"] for c in ann["categories"]}
    for c in ann["categories"]:
        c["name"] = {1: names[2], 2: names[1]}.get(c["id"], c["name"])


def _shift_ids(ann: dict[str, Any]) -> None:
    for c in ann["categories"]:
        c["id"] += 10
    for a in ann["annotations"]:
        a["category_id"] += 10


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("quantized", [False, True])
def test_categories_round_trip_through_a_model_folder(tmp_path: Path, quantized: bool) -> None:
    torch.manual_seed(0)
    model = tiny_detr(num_labels=3)
    quant = QDetrConfig() if quantized else None
    if quant is not None:
        quantize(model, quant)
    save_model_folder(tmp_path / "m", model, quant, {"method": "x"}, categories=CATEGORIES)
    assert model.config.id2label == {0: "square", 1: "disk", 2: "triangle"}  # the saved model's own config too
    meta = json.loads((tmp_path / "m" / META_FILE).read_text())
    assert meta["categories"] == [{"id": 1, "name": "square"}, {"id": 2, "name": "disk"}, {"id": 3, "name": "triangle"}]
    stored = json.loads((tmp_path / "m" / "config.json").read_text())
    assert stored["id2label"] == {"0": "square", "1": "disk", "2": "triangle"}
    loaded, loaded_quant, extra = load_model_folder(tmp_path / "m")
    assert (loaded_quant is None) == (quant is None) and extra == {"method": "x", "categories": CATEGORIES}
    assert loaded.config.id2label == {0: "square", 1: "disk", 2: "triangle"}
    assert loaded.config.label2id == {"square": 0, "disk": 1, "triangle": 2}
    if quant is None:  # a from_pretrained user sees the names too
        assert load_detr(tmp_path / "m").config.id2label[2] == "triangle"


def test_save_refuses_categories_that_do_not_fit_before_writing(tmp_path: Path) -> None:
    model = tiny_detr(num_labels=3)
    with pytest.raises(BadInputError, match="2 categories for a model that predicts 3 classes"):
        save_model_folder(tmp_path / "m", model, None, categories=CATEGORIES[:2])
    with pytest.raises(BadInputError, match="repeat a COCO category id"):
        save_model_folder(tmp_path / "m", model, None, categories=[(1, "a"), (1, "b"), (2, "c")])
    assert not (tmp_path / "m").exists() and model.config.id2label[0] == "LABEL_0"


def test_folders_without_or_with_damaged_categories(folders: Path, tmp_path: Path) -> None:
    assert "categories" not in load_model_folder(folders / "bare")[2]
    assert load_model_folder(folders / "hf")[2] == {}
    damaged = [([{"id": "1", "name": "square"}] * 3, "pair"), (CATEGORIES, "list of"), ([{"id": 1, "name": "a"}], "records 1")]
    for bad, match in damaged:
        shutil.copytree(folders / "model", tmp_path / "m")
        meta = json.loads((tmp_path / "m" / META_FILE).read_text())
        meta["categories"] = bad
        (tmp_path / "m" / META_FILE).write_text(json.dumps(meta))
        with pytest.raises(CorruptFileError, match=match):
            load_model_folder(tmp_path / "m")
        shutil.rmtree(tmp_path / "m")


def test_check_categories_names_the_first_difference() -> None:
    assert check_categories("m", CATEGORIES, "d", list(CATEGORIES)) is True
    assert check_categories("m", None, "d", [(5, "x")]) is False  # nothing recorded: nothing to compare
    with pytest.raises(BadInputError, match=r"label 1 is category 2 'disk' for the model, 2 'square' in the data"):
        check_categories("m", CATEGORIES, "d", [(1, "square"), (2, "square"), (3, "x")])
    with pytest.raises(BadInputError, match=r"3 categories, d has 4 \(label 3: category 4 'star' only in the data\)"):
        check_categories("m", CATEGORIES, "d", [*CATEGORIES, (4, "star")])


def test_eval_scores_the_folder_the_model_was_trained_on(folders: Path, capsys) -> None:
    assert main(["eval", str(folders / "model"), "--data", str(folders / "data"), "--batch-size", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["categories_checked"] is True and result["images"] == 4 and 0 <= result["AP"] <= 1


@pytest.mark.parametrize(
    "edit,message",
    [
        (_swap_names, "label 0 is category 1 'square' for the model, 1 'disk' in the data"),
        (_shift_ids, "label 0 is category 1 'square' for the model, 11 'square' in the data"),
    ],
)
def test_eval_refuses_a_folder_with_other_categories(
    folders: Path, tmp_path: Path, capsys, edit: Any, message: str
) -> None:
    data = _edited(folders / "data", tmp_path / "data", edit)
    before = _files(tmp_path), _files(folders)
    assert main(["eval", str(folders / "model"), "--data", str(data)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "trained on other categories" in err and message in err, err
    assert (_files(tmp_path), _files(folders)) == before  # nothing written
    out_dir = tmp_path / "vis"  # visualize draws the model's labels: the same refusal, before its folder exists
    assert main(["visualize", str(folders / "model"), "--data", str(data), "-o", str(out_dir)]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not out_dir.exists()


def test_train_refuses_a_teacher_trained_on_other_categories(folders: Path, tmp_path: Path, capsys) -> None:
    data = _edited(folders / "data", tmp_path / "data", _swap_names)
    out = tmp_path / "run"
    code = main(["train", "--method", "qdetr", "--data", str(data), "--val-data", str(data), "--teacher",
                 str(folders / "model"), "--steps", "2", "--backbone-steps", "1", "-o", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "teacher" in err and "other categories" in err, err
    assert not out.exists()


@pytest.mark.parametrize("folder", ["bare", "hf"])
def test_a_folder_without_categories_still_evaluates_by_their_count(
    folders: Path, tmp_path: Path, capsys, folder: str
) -> None:
    data = _edited(folders / "data", tmp_path / "data", _swap_names)  # nothing recorded to compare the names with
    assert main(["eval", str(folders / folder), "--data", str(data), "--batch-size", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["categories_checked"] is False
    assert main(["eval", str(folders / folder), "--data", str(data), "--batch-size", "4"]) == 0
    assert "records no categories" in capsys.readouterr().out
    four = _edited(folders / "data", tmp_path / "four", lambda a: a["categories"].append({"id": 4, "name": "star"}))
    assert main(["eval", str(folders / folder), "--data", str(four)]) == 2  # the count is still checked
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "predicts 3 classes" in err and "has 4" in err, err


def test_train_refuses_val_data_whose_category_names_differ(folders: Path, tmp_path: Path, capsys) -> None:
    val = _edited(folders / "data", tmp_path / "val", _swap_names)  # same ids, other names
    out = tmp_path / "run"
    assert main(["train", "--method", "fp", "--data", str(folders / "data"), "--val-data", str(val), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--val-data categories" in err and not out.exists(), err
