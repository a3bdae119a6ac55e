"""Visualize: the query-distribution PNG (FP / before DA / after DA) and the detections grid, and the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from qdetr.api import quantize
from qdetr.checkpoints import save_model_folder
from qdetr.cli import main
from qdetr.config import QDetrConfig
from qdetr.data import CocoDetectionSet, collate, make_shapes
from qdetr.evaluate import postprocess
from qdetr.models import tiny_detr
from qdetr.quantize import calibrate
from qdetr.visualize import check_query_models, detections_png, query_distribution_png
from slimkit.errors import BadInputError

PIXELS = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(alignment: str = "cross") -> tuple[Any, Any]:
    torch.manual_seed(0)
    fp = tiny_detr(num_labels=3).eval()
    q = quantize(copy.deepcopy(fp), QDetrConfig(alignment=alignment))
    calibrate(q, [PIXELS])
    with torch.no_grad():
        for name, p in q.named_parameters():
            if name.endswith(("alignment.gamma", "alignment.beta")):
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return fp, q.eval()


@pytest.fixture(scope="module")
def pair() -> tuple[Any, Any]:
    return _pair()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> CocoDetectionSet:
    folder = tmp_path_factory.mktemp("vis") / "d"
    make_shapes(folder, 5, seed=0)
    return CocoDetectionSet(folder)


def _png(path: Path, min_size: tuple[int, int]) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # the whole file decodes
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        return im.size


def _direct(model: Any, module: Any) -> torch.Tensor:
    got: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: got.append(out.detach()))
    with torch.no_grad():
        model(pixel_values=PIXELS)
    handle.remove()
    return got[0].double().reshape(-1)


def test_query_histograms_match_direct_computations(pair, tmp_path: Path) -> None:
    fp, q = pair
    stats = query_distribution_png(fp, q, PIXELS, tmp_path / "queries.png")
    assert list(stats) == ["fp", "quantized", "aligned"]
    _png(tmp_path / "queries.png", (400, 250))
    attn = q.model.decoder.layers[-1].encoder_attn
    fp_q = _direct(fp, fp.model.decoder.layers[-1].encoder_attn.q_proj)
    q_q = _direct(q, attn.base_layer.q_proj)
    with torch.no_grad():  # DA by hand on the captured queries: per head, population variance, gamma / beta
        heads = q_q.float().view(2, -1, attn.heads, attn.head_dim)
        mu, var = heads.mean(-1, keepdim=True), heads.var(-1, unbiased=False, keepdim=True)
        aligned = ((heads - mu) / torch.sqrt(var + 1e-5) * attn.alignment.gamma + attn.alignment.beta).double()
    for name, values in (("fp", fp_q), ("quantized", q_q), ("aligned", aligned.reshape(-1))):
        assert stats[name]["count"] == values.numel() == 2 * 10 * 64
        assert stats[name]["mean"] == pytest.approx(float(values.mean()), abs=1e-6)
        assert stats[name]["std"] == pytest.approx(float(values.std(unbiased=False)), rel=1e-5)
    assert abs(stats["aligned"]["std"] - stats["quantized"]["std"]) > 0.1  # DA changed the distribution


def test_query_png_is_deterministic_and_leaves_the_models_alone(pair, tmp_path: Path) -> None:
    fp, q = pair
    fp.train()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    first = query_distribution_png(fp, q, PIXELS, tmp_path / "a.png", layer=0)
    second = query_distribution_png(fp, q, PIXELS, tmp_path / "b.png", layer=0)
    assert first == second and (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert first != query_distribution_png(fp, q, PIXELS, tmp_path / "c.png", layer=-1)
    assert fp.training and not q.training
    fp.eval()
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_query_png_refusals_write_nothing(pair, tmp_path: Path) -> None:
    fp, q = pair
    target = tmp_path / "q.png"
    with pytest.raises(BadInputError, match=r"layer must be in \[-2, 1\], got 2"):
        query_distribution_png(fp, q, PIXELS, target, layer=2)
    with pytest.raises(BadInputError, match="the FP model is quantized"):
        query_distribution_png(q, q, PIXELS, target)
    with pytest.raises(BadInputError, match="not quantized"):
        query_distribution_png(fp, fp, PIXELS, target)
    with pytest.raises(BadInputError, match=r"\.png"):
        query_distribution_png(fp, q, PIXELS, tmp_path / "q.jpg")
    with pytest.raises(BadInputError, match="pixel_values"):
        query_distribution_png(fp, q, PIXELS[0], target)
    raw = quantize(copy.deepcopy(fp), QDetrConfig())
    with pytest.raises(BadInputError, match="not calibrated"):
        check_query_models(fp, raw)
    assert list(tmp_path.iterdir()) == []


def test_without_da_there_is_no_aligned_curve(tmp_path: Path) -> None:
    fp, q = _pair(alignment="none")
    stats = query_distribution_png(fp, q, PIXELS, tmp_path / "q.png")
    assert list(stats) == ["fp", "quantized"]


def test_detections_grid_draws_what_postprocess_returns(pair, shapes: CocoDetectionSet, tmp_path: Path) -> None:
    _, q = pair
    found = detections_png(q, shapes, [0, 2, 4], tmp_path / "det.png", threshold=0.0)
    width, height = _png(tmp_path / "det.png", (600, 250))
    assert width > height  # one row of three
    batch = collate([shapes[i] for i in (0, 2, 4)])
    with torch.no_grad():
        out = q(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    sizes = torch.stack([t["size"] for t in batch["labels"]])
    for got, want, t in zip(found, postprocess(out.logits, out.pred_boxes, sizes), batch["labels"]):
        assert got["image_id"] == int(t["image_id"][0]) and len(got["scores"]) == 10  # threshold 0: every query
        torch.testing.assert_close(torch.tensor(got["boxes"]), want["boxes"])
        torch.testing.assert_close(torch.tensor(got["scores"]), want["scores"])
        assert got["labels"] == want["labels"].tolist() and got["ground_truth"]["labels"] == t["class_labels"].tolist()
        x0, y0, x1, y1 = torch.tensor(got["ground_truth"]["boxes"]).unbind(-1)
        assert bool((x0 < x1).all() and (y0 < y1).all() and (y1 <= 64).all())
    again = detections_png(q, shapes, [0, 2, 4], tmp_path / "again.png", threshold=0.0)
    assert again == found and (tmp_path / "again.png").read_bytes() == (tmp_path / "det.png").read_bytes()
    high = detections_png(q, shapes, [1], tmp_path / "high.png", threshold=1.0)
    assert high[0]["scores"] == [] and high[0]["ground_truth"]["boxes"]  # the ground truth is still drawn


def test_detections_refusals_write_nothing(pair, shapes: CocoDetectionSet, tmp_path: Path) -> None:
    _, q = pair
    target = tmp_path / "d.png"
    for indices, match in (([], "empty"), ([5], "out of range"), ([True], "integers"), ("01", "list")):
        with pytest.raises(BadInputError, match=match):
            detections_png(q, shapes, indices, target)
    with pytest.raises(BadInputError, match="threshold"):
        detections_png(q, shapes, [0], target, threshold=1.5)
    with pytest.raises(BadInputError, match="train=False"):
        detections_png(q, CocoDetectionSet(shapes.folder, train=True), [0], target)
    assert list(tmp_path.iterdir()) == []


def test_cli_visualize_writes_both_pngs(pair, shapes: CocoDetectionSet, tmp_path: Path, capsys) -> None:
    fp, q = pair
    save_model_folder(tmp_path / "fp", fp, None)
    save_model_folder(tmp_path / "q", q, QDetrConfig())
    out = tmp_path / "vis"
    argv = ["visualize", str(tmp_path / "q"), "--data", str(shapes.folder), "--teacher", str(tmp_path / "fp"),
            "--images", "3", "--threshold", "0", "-o", str(out)]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 3 and result["boxes"] == 30 and set(result["queries"]) == {"fp", "quantized", "aligned"}
    assert result["queries"] == query_distribution_png(fp, q, collate([shapes[i] for i in range(3)])["pixel_values"],
                                                       tmp_path / "direct.png")  # fmt: skip
    _png(out / "detections.png", (600, 250))
    _png(out / "queries.png", (400, 250))
    assert main(argv) == 0  # a re-run into its own folder
    assert "queries.png" in capsys.readouterr().out
    assert main(["visualize", str(tmp_path / "fp"), "--data", str(shapes.folder), "--images", "1", "-o",
                 str(tmp_path / "fpvis")]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "fpvis").iterdir()) == [".slimkit-output.json", "detections.png"]
    capsys.readouterr()
    assert main(["visualize", str(tmp_path / "q"), "--data", str(shapes.folder), "--teacher", str(tmp_path / "q"),
                 "-o", str(tmp_path / "bad")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the teacher is the full-precision model" in err and not (tmp_path / "bad").exists()
