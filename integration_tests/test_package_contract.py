"""The package contract (shared/API.md, "Package contract"), checked for every package folder.

Every folder with a ``pyproject.toml`` (``shared`` and ``packages/*``) is a package. All of them
have ``<pkg>.cli.build_parser()`` whose subcommands dispatch through a ``func`` default, a
``demo`` subcommand, and a console script that prints ``<script> <version>`` for ``--version``.
Method packages (every package but slimkit) also have ``<pkg>.api`` with ``REGISTRY``,
``ENTRY_POINT``, ``UNDO`` and ``example()``, a small ``__all__``, an entry point that changes
the model in place and an undo that restores it exactly. A compact table of what was checked
is printed at the end of the session (visible with ``-s`` or in the terminal summary).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import importlib.metadata
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MAX_ALL = 16


@dataclasses.dataclass(frozen=True)
class PackageInfo:
    folder: str
    dist: str
    import_name: str
    scripts: tuple[str, ...]

    @property
    def is_method(self) -> bool:
        return self.import_name != "slimkit"


def _packages() -> list[PackageInfo]:
    found = []
    for pyproject in [ROOT / "shared" / "pyproject.toml", *sorted((ROOT / "packages").glob("*/pyproject.toml"))]:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        project = data["project"]
        includes = [p["include"] for p in data.get("tool", {}).get("poetry", {}).get("packages", []) if "include" in p]
        import_name = includes[0] if includes else project["name"].replace("-", "_")
        found.append(
            PackageInfo(
                folder=str(pyproject.parent.relative_to(ROOT)),
                dist=project["name"],
                import_name=import_name,
                scripts=tuple(sorted(project.get("scripts", {}))),
            )
        )
    return found


PACKAGES = _packages()
METHOD_PACKAGES = [p for p in PACKAGES if p.is_method]
_TABLE: dict[str, dict[str, str]] = {p.dist: {} for p in PACKAGES}


def _record(pkg: PackageInfo, column: str, value: str) -> None:
    _TABLE[pkg.dist][column] = value


@pytest.fixture(scope="session", autouse=True)
def _contract_table() -> Iterator[None]:
    yield
    columns = ["version", "cli", "script", "api", "__all__", "entry/undo", "configs"]
    rows = [["package", *columns]] + [[dist, *(cells.get(c, "-") for c in columns)] for dist, cells in _TABLE.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    print("\n\npackage contract\n" + "\n".join(lines))


def _ids(pkgs: list[PackageInfo]) -> list[str]:
    return [p.dist for p in pkgs]


def _api(pkg: PackageInfo) -> Any:
    try:
        return importlib.import_module(f"{pkg.import_name}.api")
    except ImportError as exc:
        _record(pkg, "api", "missing")
        pytest.fail(f"{pkg.import_name}.api cannot be imported: {exc}")


# --------------------------------------------------------------------------- every package


@pytest.mark.parametrize("pkg", PACKAGES, ids=_ids(PACKAGES))
def test_cli_has_build_parser_func_dispatch_and_demo(pkg: PackageInfo) -> None:
    cli = importlib.import_module(f"{pkg.import_name}.cli")
    assert callable(getattr(cli, "build_parser", None)), f"{pkg.import_name}.cli has no build_parser()"
    parser = cli.build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert subs, f"{pkg.import_name}.cli.build_parser() has no subcommands"
    commands: dict[str, argparse.ArgumentParser] = {}
    for action in subs:
        commands.update(action.choices)
    without = sorted(name for name, sub in commands.items() if not callable(sub.get_default("func")))
    assert not without, f"{pkg.import_name} subcommands without a func default (one dispatch style): {without}"
    assert "demo" in commands, f"{pkg.import_name} has no 'demo' subcommand"
    _record(pkg, "cli", f"{len(commands)} cmds, func, demo")


@pytest.mark.parametrize("pkg", PACKAGES, ids=_ids(PACKAGES))
def test_console_script_prints_version(pkg: PackageInfo) -> None:
    version = importlib.metadata.version(pkg.dist)
    _record(pkg, "version", version)
    assert pkg.scripts, f"{pkg.dist} declares no [project.scripts]"
    for script in pkg.scripts:
        exe = BIN / script
        assert exe.is_file(), f"console script {exe} is not installed"
        proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-1000:]
        assert proc.stdout.strip() == f"{script} {version}", proc.stdout
    _record(pkg, "script", ", ".join(f"{s} --version" for s in pkg.scripts))


# --------------------------------------------------------------------------- method packages


@pytest.mark.parametrize("pkg", METHOD_PACKAGES, ids=_ids(METHOD_PACKAGES))
def test_version_and_all(pkg: PackageInfo) -> None:
    module = importlib.import_module(pkg.import_name)
    assert module.__version__ == importlib.metadata.version(pkg.dist)
    api = _api(pkg)
    exported = list(getattr(module, "__all__", []))
    needed = ["__version__", api.ENTRY_POINT.__name__, api.UNDO.__name__, *(t.__name__ for t in api.REGISTRY.config_types)]
    missing = [n for n in needed if n not in exported]
    assert not missing, f"{pkg.import_name}.__all__ lacks {missing}"
    assert len(exported) <= MAX_ALL, f"{pkg.import_name}.__all__ has {len(exported)} names (at most {MAX_ALL})"
    absent = [n for n in exported if not hasattr(module, n)]
    assert not absent, f"{pkg.import_name}.__all__ names missing attributes: {absent}"
    _record(pkg, "__all__", f"{len(exported)} names")


@pytest.mark.parametrize("pkg", METHOD_PACKAGES, ids=_ids(METHOD_PACKAGES))
def test_api_module(pkg: PackageInfo) -> None:
    from slimkit.registry import MethodRegistry

    api = _api(pkg)
    for name in ("REGISTRY", "ENTRY_POINT", "UNDO", "example"):
        assert hasattr(api, name), f"{pkg.import_name}.api has no {name}"
    assert isinstance(api.REGISTRY, MethodRegistry)
    assert len(api.REGISTRY.config_types) >= 1
    assert callable(api.ENTRY_POINT) and callable(api.UNDO) and callable(api.example)
    _record(pkg, "api", f"{api.ENTRY_POINT.__name__}/{api.UNDO.__name__}")


def _outputs(model: nn.Module, x: torch.Tensor) -> Any:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def _input_for(model: nn.Module) -> torch.Tensor:
    from_model = getattr(model, "example_input", None)
    if callable(from_model):
        x = from_model()
        assert isinstance(x, torch.Tensor)
        return x
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d)))
    g = torch.Generator().manual_seed(0)
    if isinstance(first, nn.Conv2d):
        size = getattr(model, "img_size", None) or getattr(getattr(model, "patch_embed", None), "img_size", None) or 16
        size = size[0] if isinstance(size, (tuple, list)) else size
        return torch.randn(2, first.in_channels, int(size), int(size), generator=g)
    if isinstance(first, nn.Conv1d):
        return torch.randn(2, first.in_channels, 16, generator=g)
    return torch.randn(2, first.in_features, generator=g)


@pytest.mark.parametrize("pkg", METHOD_PACKAGES, ids=_ids(METHOD_PACKAGES))
def test_entry_point_in_place_and_undo_exact(pkg: PackageInfo) -> None:
    from slimkit.wrappers import WrapperModule

    api = _api(pkg)
    torch.manual_seed(0)
    model, config = api.example()
    assert isinstance(model, nn.Module)
    assert type(config) in api.REGISTRY.config_types, f"example() config {type(config).__name__} is not registered"
    x = _input_for(model)
    before = _outputs(model, x)
    original = copy.deepcopy(model.state_dict())
    present = {(name, type(mod)) for name, mod in model.named_modules()}  # the example model's own classes
    result = api.ENTRY_POINT(model, config)
    assert result is model, f"{api.ENTRY_POINT.__name__} must return the very same model object"
    undone = api.UNDO(model)
    assert undone is model, f"{api.UNDO.__name__} must return the very same model object"
    leftovers = sorted(
        f"{name}: {type(mod).__qualname__}"
        for name, mod in model.named_modules()
        if isinstance(mod, WrapperModule)
        or (type(mod).__module__.split(".")[0] == pkg.import_name and (name, type(mod)) not in present)
    )
    assert not leftovers, f"after {api.UNDO.__name__} the model still holds package modules: {leftovers}"
    assert torch.equal(_outputs(model, x), before), "outputs after undo differ from the outputs before the entry point"
    assert original.keys() == model.state_dict().keys()
    _record(pkg, "entry/undo", "same obj, exact")


@pytest.mark.parametrize("pkg", METHOD_PACKAGES, ids=_ids(METHOD_PACKAGES))
def test_every_config_round_trips(pkg: PackageInfo) -> None:
    from slimkit.io import config_to_dict

    api = _api(pkg)
    _, example_config = api.example()
    names, need_args = [], []
    for config_type in api.REGISTRY.config_types:
        if type(example_config) is config_type:
            config = example_config
        else:
            try:
                config = config_type()
            except TypeError:  # required fields: only the example's instance can be checked
                need_args.append(config_type.__name__)
                continue
        data = config_to_dict(config)
        again = api.REGISTRY.config_from_dict(data)
        assert type(again) is config_type and again == config, f"{config_type.__name__} does not round-trip"
        names.append(config_type.__name__)
    note = f" ({len(need_args)} need args: {', '.join(need_args)})" if need_args else ""
    _record(pkg, "configs", f"{len(names)} round-trip{note}")
    assert names, "no registered config could be built to check the round trip"
