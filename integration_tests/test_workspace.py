"""The monorepo's own contracts: every package is laid out alike and pins slimkit by a range that fits."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())
SLIMKIT_VERSION = tomllib.loads((ROOT / "shared" / "pyproject.toml").read_text())["project"]["version"]


def _project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())


@pytest.mark.parametrize("folder", PACKAGES, ids=lambda p: p.name)
def test_slimkit_range_admits_the_local_slimkit(folder: Path) -> None:
    data = _project(folder)
    reqs = [Requirement(r) for r in data["project"]["dependencies"]]
    slimkit = [r for r in reqs if r.name == "slimkit"]
    assert len(slimkit) == 1, "declare slimkit exactly once in [project].dependencies"
    assert str(slimkit[0].specifier), "slimkit must be pinned by a range, not left open"
    assert slimkit[0].specifier.contains(SLIMKIT_VERSION), (
        f"{folder.name} wants slimkit {slimkit[0].specifier}, the workspace has {SLIMKIT_VERSION}"
    )
    dev = data["tool"]["poetry"]["group"]["dev"]["dependencies"]["slimkit"]
    assert dev == {"path": "../../shared", "develop": True}
    assert not any(r.url for r in reqs), "library dependencies are ranges, never local files or URLs"


@pytest.mark.parametrize("folder", [ROOT / "shared", *PACKAGES], ids=lambda p: p.name)
def test_package_layout(folder: Path) -> None:
    data = _project(folder)
    name = data["project"]["name"]
    module = data["tool"]["poetry"]["packages"][0]["include"]
    assert data["build-system"]["build-backend"] == "poetry.core.masonry.api"
    assert name in data["project"]["scripts"], "one console script, named as the package"
    for required in ("README.md", "CHANGELOG.md", "tests", f"src/{module}/__init__.py", f"src/{module}/quickstart.py"):
        assert (folder / required).exists(), f"{name} lacks {required}"
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert name in root["tool"]["poetry"]["dependencies"], f"add {name} to the root workspace"
