"""Install each package's built wheel alone (with the slimkit wheel) into a brand-new venv.

Proves every package is installable on its own and declares everything it imports:
the fresh venv sees nothing of the development environment except the torch /
torchvision stack (5 GB, so it is shared read-only through a ``.pth`` file that
points at symlinks to exactly torchvision's dependency closure). Everything else
comes from the wheel's own declared requirements.

For each package: ``pip install <wheel> slimkit.whl``, ``pip check``, ``<cli> --help``,
and an import of every module in the package.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
STATE = ROOT / ".tools-state"
TORCH_ROOTS = ("torch", "torchvision")


def _needed(dist: metadata.Distribution, extras: frozenset[str]) -> list[Requirement]:
    """The requirements of ``dist`` that apply here, with ``extras`` requested."""
    out = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
            out.append(req)
    return out


def torch_closure() -> set[str]:
    """Distribution names torch and torchvision need, from installed metadata.

    Extras count: torch 2.14 asks for ``cuda-toolkit[cublas,cufft,...]``, and the CUDA
    libraries behind those extras are most of the stack's size. Missing them made pip
    install about 1 GB of ``nvidia-*`` wheels again into every isolated venv.
    """
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(name, frozenset()) for name in TORCH_ROOTS]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        names.add(canonicalize_name(dist.metadata["Name"]))
        for req in _needed(dist, extras):
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return names


def build_torch_base() -> Path:
    """A folder of symlinks to the torch stack's files in the dev venv (rebuilt when versions change)."""
    closure = sorted(torch_closure())
    key = ",".join(f"{n}={metadata.version(n)}" for n in closure)
    base = STATE / "torch-base"
    marker = base / ".key"
    if marker.is_file() and marker.read_text() == key:
        return base
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    for name in closure:
        dist = metadata.distribution(name)
        site = Path(str(dist.locate_file("")))
        tops: set[str] = set()
        for f in dist.files or []:
            first = f.parts[0]
            if first in ("..", "__pycache__") or first.endswith(".pth"):
                continue
            tops.add(first)
        for top in tops:
            src, dst = site / top, base / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
    marker.write_text(key)
    return base


def project_info(pyproject: Path) -> tuple[str, str, str]:
    data = tomllib.loads(pyproject.read_text())
    name = data["project"]["name"]
    script = next(iter(data["project"].get("scripts", {name: ""})))
    module = data["tool"]["poetry"]["packages"][0]["include"]
    return name, script, module


def wheel_for(name: str) -> Path:
    pattern = name.replace("-", "_") + "-*.whl"
    found = sorted(DIST.glob(pattern))
    if not found:
        raise SystemExit(f"check-install: error: no wheel {pattern} in dist/ (run tools/build.sh)")
    return found[-1]


SMOKE = """
import importlib, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
count = 0
for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    importlib.import_module(info.name)
    count += 1
print(f"imported {pkg.__name__} and {count} submodules")
"""


def check(pyproject: Path, base: Path, work: Path) -> float:
    name, script, module = project_info(pyproject)
    start = time.perf_counter()
    venv = work / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "_slimkit_torch_base.pth").write_text(str(base) + "\n")
    py = str(venv / "bin" / "python")
    wheels = [str(wheel_for(name))]
    if name != "slimkit":
        wheels.append(str(wheel_for("slimkit")))
    # No wheel cache: CI machines can be short of disk, and each venv is thrown away.
    pip = [py, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir", "-q"]
    subprocess.run([*pip, "install", "-c", str(ROOT / "tools" / "constraints.txt"), *wheels], check=True)
    subprocess.run([*pip, "check"], check=True)
    subprocess.run([str(venv / "bin" / script), "--help"], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([py, "-c", SMOKE, module], check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    size = _size_mb(venv)
    print(
        f"check-install: {name}: wheel installs alone, `{script} --help` runs, {out.stdout.strip()} "
        f"({elapsed:.0f}s, venv {size:.0f} MB)"
    )
    return elapsed


def _size_mb(folder: Path) -> float:
    total = sum(f.lstat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
    return total / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", help="package folders (default: shared and packages/*)")
    args = parser.parse_args()
    targets = [ROOT / p for p in args.packages] or [ROOT / "shared", *sorted((ROOT / "packages").glob("*/"))]
    base = build_torch_base()
    failures = []

    def one(target: Path) -> None:
        # One folder per package, removed as soon as its check ends: peak disk use is
        # two venvs, not eight (open3d, transformers and faiss are each hundreds of MB).
        work = Path(tempfile.mkdtemp(prefix=f"slimkit-isolated-{target.name}-"))
        try:
            check(target / "pyproject.toml", base, work)
        except subprocess.CalledProcessError as exc:
            failures.append(target.name)
            print(f"check-install: {target.name}: FAILED ({' '.join(map(str, exc.cmd))[:200]})", file=sys.stderr)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    print(f"check-install: {free:.1f} GiB free in {tempfile.gettempdir()}")
    # Installs are mostly I/O bound: run two side by side.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(one, targets))
    if failures:
        print(f"check-install: error: {', '.join(failures)} not installable alone", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
