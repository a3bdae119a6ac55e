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
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
STATE = ROOT / ".tools-state"
TORCH_ROOTS = ("torch", "torchvision")


def _req_name(req: str) -> str | None:
    if ";" in req:
        marker = req.split(";", 1)[1]
        if "extra ==" in marker:
            return None
    match = re.match(r"[A-Za-z0-9_.\-]+", req.strip())
    return match.group(0).lower().replace("_", "-") if match else None


def torch_closure() -> set[str]:
    """Distribution names torch and torchvision need, from installed metadata."""
    seen: set[str] = set()
    todo = list(TORCH_ROOTS)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for req in dist.requires or []:
            dep = _req_name(req)
            if dep and dep not in seen:
                todo.append(dep)
    return seen


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
    pip = [py, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "-c", str(ROOT / "tools" / "constraints.txt"), *wheels], check=True)
    subprocess.run([*pip, "check"], check=True)
    subprocess.run([str(venv / "bin" / script), "--help"], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([py, "-c", SMOKE, module], check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    print(f"check-install: {name}: wheel installs alone, `{script} --help` runs, {out.stdout.strip()} ({elapsed:.0f}s)")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", help="package folders (default: shared and packages/*)")
    args = parser.parse_args()
    targets = [ROOT / p for p in args.packages] or [ROOT / "shared", *sorted((ROOT / "packages").glob("*/"))]
    base = build_torch_base()
    failures = []

    def one(target: Path, tmp: str) -> None:
        try:
            check(target / "pyproject.toml", base, Path(tmp))
        except subprocess.CalledProcessError as exc:
            failures.append(target.name)
            print(f"check-install: {target.name}: FAILED ({' '.join(map(str, exc.cmd))[:200]})", file=sys.stderr)

    # Installs are mostly I/O bound: run them side by side.
    with tempfile.TemporaryDirectory(prefix="slimkit-isolated-") as tmp, ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda t: one(t, tmp), targets))
    if failures:
        print(f"check-install: error: {', '.join(failures)} not installable alone", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
