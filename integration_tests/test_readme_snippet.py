"""The root README's Python snippet runs offline exactly as written, and its local-weights line works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
LOAD_LINE = re.compile(r"^# (timm\.models\.load_checkpoint\(model, )\"([^\"]+)\"\)(.*)$", re.MULTILINE)


def _snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks, "the README has no Python snippet"
    return str(blocks[0])


def _run(code: str, tmp_path: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NO_PROXY": "*"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_snippet_runs_offline_as_written(tmp_path: Path) -> None:
    assert "pretrained=True" not in _snippet()
    assert _run(_snippet(), tmp_path).strip() == "2.905"


def test_readme_local_weights_line_loads_a_local_checkpoint(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from slimkit.io import save_state_dict

    model = timm.create_model("deit_small_patch16_224")
    weights = tmp_path / "deit_small.safetensors"
    save_state_dict(weights, model.state_dict())
    snippet = _snippet()
    assert LOAD_LINE.search(snippet), "the snippet lost its local-weights line"
    code = LOAD_LINE.sub(lambda m: f'{m.group(1)}"{weights}")', snippet)
    # the loaded weights are the saved ones: check one tensor against the file
    code += (
        "\nfrom safetensors.torch import load_file\n"
        f"ref = load_file({str(weights)!r})\n"
        "import torch\nprint(torch.equal(model.patch_embed.proj.weight, ref['patch_embed.proj.weight']))\n"
    )
    assert _run(code, tmp_path).split() == ["2.905", "True"]
