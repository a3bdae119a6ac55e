"""Mutation testing of one package's core modules (mutmut), in a scratch copy of the repository.

    tools/mutate.sh PACKAGE [--modules a,b] [--max-children N] [--json FILE] [--equivalent FILE]

PACKAGE is ``slimkit`` (the ``shared`` folder) or a folder name under ``packages/``. The core
modules come from the package's ``pyproject.toml``::

    [tool.slimkit.mutation]
    core = ["train.py", "io.py"]                # files under src/<import>/
    equivalent = "mutation-equivalent.toml"     # optional; this is the default

The whole repository is copied to a scratch folder first (the real tree is never touched) and
mutmut runs there against the package's own ``tests/``. The tests import the mutated copy:
mutmut puts ``mutants/src`` first on ``sys.path``, and this tool also puts it first on
``PYTHONPATH`` (followed by the scratch copy's ``src`` folders, ahead of the editable installs),
so tests that start Python subprocesses see the mutants as well. mutmut's own start-up check
("forced fail": every mutated function raises) stops the run if the tests do not import them.
Each mutant's tests run in a fresh process forked from a server that has imported only third-party
modules (torch, timm, pytest, ...), never the repository's code: a module-level cache filled while
the unmutated code ran would otherwise hide the mutants of the function that fills it.

Printed: mutants, killed, timeout, survived, no tests, the score and every mutant no test caught,
with its diff. Score = caught / (caught + not caught), where caught is killed + timeout (+ crashed)
and not caught is survived + no tests (a mutant in code no test runs is not caught either). A
surviving mutant listed in the package's equivalent-mutant file (with the reason it is acceptable)
is taken out of the denominator of the adjusted score, and reported separately.

The equivalent-mutant file (TOML) has one entry per accepted survivor::

    [[mutant]]
    name = "slimkit.io.x_atomic_write__mutmut_12"   # as printed; numbers shift when the function changes
    change = ["-    mode = 0o644", "+    mode = 0o645"]  # the diff's -/+ lines, as printed (optional)
    reason = "equivalent: ..."

An entry matches a survivor of the same function with the same change (whatever its number), or,
without ``change``, the survivor with that name. Entries that match nothing are reported as stale.

Not part of CI (a package takes tens of minutes). ``--workdir DIR`` keeps the scratch copy;
running again with the same DIR resumes an interrupted run, and ``--retest`` re-runs the mutants
that were not caught last time against the current tests.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CAUGHT = {"killed", "timeout", "segfault", "caught by type check"}
NOT_CAUGHT = {"survived", "no tests", "suspicious"}
# Never copied into the scratch tree: environments, caches, build outputs, old mutmut folders.
IGNORE_ANYWHERE = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "mutants"}
IGNORE_AT_ROOT = {".git", ".venv", "dist", "build", "demo-output", ".tools-state"}
MUTMUT = "import sys; from mutmut.__main__ import cli; sys.argv[0] = 'mutmut'; cli()"


def package_folder(root: Path, name: str) -> Path:
    if name in ("slimkit", "shared"):
        return root / "shared"
    for folder in sorted((root / "packages").glob("*/")):
        if name in (folder.name, folder.name.replace("-", "_")):
            return folder
    known = ["slimkit", *sorted(p.name for p in (root / "packages").glob("*/") if (p / "pyproject.toml").is_file())]
    raise SystemExit(f"mutate: error: unknown package {name!r} (known: {', '.join(known)})")


def package_config(folder: Path) -> tuple[str, dict[str, Any]]:
    data = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    includes = [p["include"] for p in data.get("tool", {}).get("poetry", {}).get("packages", []) if "include" in p]
    module = includes[0] if includes else data["project"]["name"].replace("-", "_")
    return module, data.get("tool", {}).get("slimkit", {}).get("mutation", {})


def core_files(folder: Path, module: str, cfg: dict[str, Any], modules: str | None) -> list[str]:
    """Paths (relative to the package folder) of the modules to mutate."""
    if modules:
        names = [m.strip() for m in modules.split(",") if m.strip()]
    else:
        names = list(cfg.get("core", []))
        if not names:
            raise SystemExit(
                f"mutate: error: {folder / 'pyproject.toml'} has no [tool.slimkit.mutation] core = [...]; "
                "add it or pass --modules"
            )
    files = []
    for name in names:
        name = name.removeprefix(f"src/{module}/").removesuffix(".py").replace(".", "/")
        path = f"src/{module}/{name}.py"
        if not (folder / path).is_file():
            raise SystemExit(f"mutate: error: no module {path} in {folder}")
        files.append(path)
    return files


def copy_tree(source: Path, dest: Path) -> None:
    """Copy the repository (mtimes kept, so mutmut's cache survives a re-sync of an unchanged file)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in IGNORE_ANYWHERE or n.endswith(".egg-info")}
        if Path(directory).resolve() == source.resolve():
            skip |= {n for n in names if n in IGNORE_AT_ROOT}
        return skip

    shutil.copytree(source, dest, ignore=ignore, symlinks=True, dirs_exist_ok=True)


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def third_party_imports(scratch: Path, pkg: Path, tests: list[str]) -> list[str]:
    """Modules the sources and tests import from outside the repository, for the fork server to preload.

    Each mutant's tests run in a process forked from a server that has imported only these (torch,
    timm, ...; seconds saved per mutant) and nothing of the repository, so no module-level cache of
    the code under test (filled while the unmutated code ran) leaks into a mutant's run.
    """
    srcs = [scratch / "shared" / "src", *sorted((scratch / "packages").glob("*/src"))]
    local = {p.name.removesuffix(".py") for d in srcs for p in d.iterdir()}
    files = [f for d in srcs for f in d.rglob("*.py")]
    for t in tests:
        local |= {p.stem for p in (pkg / t).rglob("*.py")} | {p.name for p in (pkg / t).rglob("*") if p.is_dir()}
        files += (pkg / t).rglob("*.py")
    names: set[str] = {"pytest"} | {ep.value.split(":")[0] for ep in entry_points(group="pytest11")}
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return sorted(n for n in names if n.split(".")[0] not in local and n.split(".")[0] != "__future__")


# Imported last by the fork server: what it holds is frozen, so the collections every test run starts
# (pytest's gc_collect_harder, torch) do not walk torch's whole heap again in each mutant's process.
GC_FREEZE = "import gc\n\ngc.collect()\ngc.freeze()\n"


def write_mutmut_config(pkg: Path, files: list[str], tests: list[str], preload: Path) -> None:
    """Append mutmut's settings to the scratch copy's pyproject.toml (the real one is untouched)."""
    text = (pkg / "pyproject.toml").read_text(encoding="utf-8")
    text += (
        "\n\n# Written by tools/mutate.py in its scratch copy only.\n[tool.mutmut]\n"
        'source_paths = ["src/"]\n'
        f"only_mutate = {toml_list(files)}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]\n'
        'process_isolation = "forkserver"\n'
        'forkserver_warmup = "import"\n'
        f"preload_modules_file = {json.dumps(str(preload))}\n"
    )
    (pkg / "pyproject.toml").write_text(text, encoding="utf-8")


def scratch_env(scratch: Path, pkg: Path, threads: int) -> dict[str, str]:
    srcs = [pkg / "mutants" / "src", scratch / "shared" / "src", *sorted((scratch / "packages").glob("*/src")),
            scratch / ".mutate"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in srcs)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the scratch copy's bytecode is reused by every mutant's run
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("TRITON_INTERPRET", "1")  # as tools/test.sh: Triton kernels under the CPU interpreter
    env.pop("MUTANT_UNDER_TEST", None)
    return env


def check_imports(pkg: Path, scratch: Path, env: dict[str, str]) -> dict[str, str]:
    """Which file each first-party package is imported from, with the environment the tests get."""
    folders = [scratch / "shared", *sorted(p for p in (scratch / "packages").glob("*/") if (p / "src").is_dir())]
    modules = [package_config(f)[0] for f in folders]
    code = "import importlib, json, sys; print(json.dumps({m: importlib.import_module(m).__file__ for m in sys.argv[1:]}))"
    proc = subprocess.run([sys.executable, "-c", code, *modules], cwd=pkg, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"mutate: error: importing the scratch copy failed:\n{proc.stderr[-2000:]}")
    found: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    outside = {m: f for m, f in found.items() if not Path(f).resolve().is_relative_to(scratch.resolve())}
    if outside:
        raise SystemExit(f"mutate: error: tests would import code outside the scratch copy: {outside}")
    return found


def not_caught_names(pkg: Path, files: list[str]) -> list[str]:
    """Mutants of the given files whose last result was not a catch (for --retest)."""
    from mutmut.stats import status_by_exit_code

    names = []
    for f in files:
        meta = pkg / "mutants" / (f + ".meta")
        if meta.is_file():
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            names += [k for k, v in codes.items() if status_by_exit_code[v] in NOT_CAUGHT]
    return names


def function_spans(path: Path) -> dict[tuple[str | None, str], tuple[int, int]]:
    """(class or None, function) -> (first line incl. decorators, last line), as mutmut names them."""
    spans: dict[tuple[str | None, str], tuple[int, int]] = {}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        owners: list[tuple[str | None, ast.AST]] = []
        if isinstance(node, functions):
            owners.append((None, node))
        elif isinstance(node, ast.ClassDef):
            owners += [(node.name, n) for n in node.body if isinstance(n, functions)]
        for cls, fn in owners:
            assert isinstance(fn, functions)
            start = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
            spans[(cls, fn.name)] = (start, fn.end_lineno or fn.lineno)
    return spans


def change_lines(diff: str) -> list[str]:
    return [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


def same_change(a: list[str], b: list[str]) -> bool:
    return [(ln[0], ln[1:].strip()) for ln in a] == [(ln[0], ln[1:].strip()) for ln in b]


def collect_results(pkg: Path, files: list[str]) -> list[dict[str, Any]]:
    """Every mutant of the given files: name, module, function, status, line, diff (survivors only)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key

    results = []
    cwd = os.getcwd()
    os.chdir(pkg)  # mutmut's readers take paths relative to the project folder
    try:
        for f in files:
            meta = Path("mutants") / (f + ".meta")
            if not meta.is_file():
                continue
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            spans = function_spans(Path(f))
            source_lines = Path(f).read_text(encoding="utf-8").splitlines()
            for name, code in codes.items():
                func, cls = orig_function_and_class_names_from_key(name)
                status = status_by_exit_code[code]
                row: dict[str, Any] = {
                    "name": name,
                    "module": f,
                    "function": f"{cls}.{func}" if cls else func,
                    "status": status,
                }
                if status in NOT_CAUGHT:
                    diff = get_diff_for_mutant(name, path=f)
                    row["change"] = change_lines(diff)
                    row["line"] = mutant_line(row["change"], spans.get((cls, func)), source_lines)
                    row["diff"] = diff
                results.append(row)
    finally:
        os.chdir(cwd)
    return results


def mutant_line(change: list[str], span: tuple[int, int] | None, lines: list[str]) -> int | None:
    if span is None:
        return None
    removed = [ln[1:].strip() for ln in change if ln.startswith("-")]
    if removed:
        for i in range(span[0], span[1] + 1):
            if lines[i - 1].strip() == removed[0]:
                return i
    return span[0]


def load_equivalent(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.is_file():
        return []
    entries = tomllib.loads(path.read_text(encoding="utf-8")).get("mutant", [])
    for e in entries:
        if "name" not in e or "reason" not in e:
            raise SystemExit(f"mutate: error: {path}: every [[mutant]] needs name and reason: {e}")
    return entries


def match_equivalent(survivors: list[dict[str, Any]], entries: list[dict[str, Any]],
                     files: list[str]) -> list[dict[str, Any]]:
    """Mark survivors the equivalent list accepts; return the entries that matched nothing (stale).

    Entries for modules outside this run (``--modules``) are neither used nor reported.
    """
    modules = {f.removeprefix("src/").removesuffix(".py").replace("/", ".") for f in files}
    stale = []
    for e in entries:
        if e["name"].partition("__mutmut_")[0].rpartition(".")[0] not in modules:
            continue
        prefix = e["name"].partition("__mutmut_")[0] + "__mutmut_"
        candidates = [s for s in survivors if "equivalent" not in s]
        if "change" in e:
            hits = [s for s in candidates if s["name"] == e["name"] and same_change(s["change"], e["change"])]
            hits = hits or [s for s in candidates if s["name"].startswith(prefix) and same_change(s["change"], e["change"])]
        else:
            hits = [s for s in candidates if s["name"] == e["name"]]
        if hits:
            hits[0]["equivalent"] = e["reason"]
        else:
            stale.append(e)
    return stale


def summarize(results: list[dict[str, Any]], stale: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = defaultdict(int)
    for r in results:
        counts[r["status"]] += 1
    caught = sum(counts[s] for s in CAUGHT)
    not_caught = sum(counts[s] for s in NOT_CAUGHT)
    equivalent = sum(1 for r in results if "equivalent" in r)
    tested = caught + not_caught
    return {
        "mutants": len(results),
        "killed": counts["killed"],
        "timeout": counts["timeout"],
        "crashed": counts["segfault"],
        "survived": counts["survived"],
        "no_tests": counts["no tests"],
        "suspicious": counts["suspicious"],
        "not_checked": counts["not checked"] + counts["check was interrupted by user"],
        "skipped": counts["skipped"],
        "caught": caught,
        "not_caught": not_caught,
        "equivalent": equivalent,
        "stale_equivalent_entries": len(stale),
        "score": caught / tested if tested else None,
        "score_without_equivalent": caught / (tested - equivalent) if tested - equivalent else None,
    }


def all_mutant_names(folder: Path, files: list[str]) -> dict[str, list[str]]:
    """Every mutant mutmut makes of each file, by its full name (``module.function__mutmut_N``)."""
    from mutmut.mutation.file_mutation import mutate_file_contents

    cwd = os.getcwd()
    os.chdir(folder)  # mutmut reads its settings from the current folder
    try:
        out = {}
        for f in files:
            module = f.removeprefix("src/").removesuffix(".py").replace("/", ".")
            names = mutate_file_contents(f, (folder / f).read_text(encoding="utf-8")).mutant_names
            out[f] = [f"{module}.{n}" for n in names]
        return out
    finally:
        os.chdir(cwd)


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (the score of a sampled run)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def print_report(package: str, summary: dict[str, Any], results: list[dict[str, Any]],
                 stale: list[dict[str, Any]], minutes: float, full_diff: bool) -> None:
    s = summary
    print(f"\nmutation testing: {package} ({minutes:.1f} min)")
    print(f"  mutants {s['mutants']}: killed {s['killed']}, timeout {s['timeout']}, crashed {s['crashed']}, "
          f"survived {s['survived']}, no tests {s['no_tests']}, suspicious {s['suspicious']}, "
          f"not checked {s['not_checked']}, skipped {s['skipped']}")
    print(f"  score {pct(s['score'])} = caught {s['caught']} / (caught + not caught {s['not_caught']})")
    print(f"  score without the {s['equivalent']} listed equivalent survivors: {pct(s['score_without_equivalent'])}")
    per_module: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in results:
        if r["status"] in CAUGHT:
            per_module[r["module"]][0] += 1
        elif r["status"] in NOT_CAUGHT and "equivalent" not in r:
            per_module[r["module"]][1] += 1
    print("  per module (caught / not caught, equivalent excluded):")
    for module, (c, n) in sorted(per_module.items()):
        print(f"    {module:<40} {c:4d} / {n:<4d} {pct(c / (c + n) if c + n else None)}")
    open_ = [r for r in results if r["status"] in NOT_CAUGHT and "equivalent" not in r]
    if open_:
        print(f"\nnot caught ({len(open_)}), by module and function:")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in open_:
        groups[(r["module"], r["function"])].append(r)
    for (module, function), rows in sorted(groups.items()):
        print(f"  {module} :: {function} ({len(rows)})")
        for r in sorted(rows, key=lambda r: (r.get("line") or 0, r["name"])):
            print(f"    L{r.get('line')} {r['name']} [{r['status']}]")
            lines = r["diff"].splitlines() if full_diff else r["change"]
            for ln in lines:
                print(f"        {ln}")
    accepted = [r for r in results if "equivalent" in r]
    if accepted:
        print(f"\nlisted as equivalent ({len(accepted)}):")
        for r in accepted:
            print(f"  {r['name']}: {r['equivalent']}")
    if stale:
        print(f"\nstale equivalent entries (no surviving mutant matches them; remove or update) ({len(stale)}):")
        for e in stale:
            print(f"  {e['name']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("package", help="slimkit, or a folder name under packages/")
    parser.add_argument("--modules", help="comma-separated modules to mutate instead of the core list")
    parser.add_argument("--max-children", type=int, default=1, help="parallel test processes (default 1)")
    parser.add_argument("--json", type=Path, help="also write the summary and every not-caught mutant here")
    parser.add_argument("--equivalent", type=Path,
                        help="equivalent-mutant list (default: the package's mutation-equivalent.toml)")
    parser.add_argument("--source", type=Path, default=ROOT,
                        help="repository tree to copy and test (default: this checkout)")
    parser.add_argument("--workdir", type=Path, help="keep the scratch copy here (reused by the next run)")
    parser.add_argument("--retest", action="store_true",
                        help="with a reused --workdir: re-run the mutants not caught last time")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per test process (default 1)")
    parser.add_argument("--full-diff", action="store_true", help="print whole unified diffs, not just -/+ lines")
    parser.add_argument("--fail-under", type=float, help="exit 1 if the adjusted score (percent) is below this")
    parser.add_argument("--count", action="store_true", help="only count the mutants per module (runs no tests)")
    parser.add_argument("--sample", type=float, default=None,
                        help="run only this fraction of the mutants, drawn uniformly (score then estimated, "
                             "with a 95%% interval); for quick looks and old revisions, not for the final score")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the --sample draw (default 0)")
    args = parser.parse_args()

    try:
        import mutmut
    except ImportError:
        raise SystemExit("mutate: error: mutmut is not installed; run tools/mutate.sh (it installs the pinned "
                         "version) or .venv/bin/pip install -c tools/constraints.txt mutmut") from None

    source = args.source.resolve()
    folder = package_folder(source, args.package)
    module, cfg = package_config(folder)
    files = core_files(folder, module, cfg, args.modules)
    tests = list(cfg.get("tests", ["tests"]))
    equivalent_path = args.equivalent or folder / cfg.get("equivalent", "mutation-equivalent.toml")
    entries = load_equivalent(equivalent_path)

    if args.sample is not None and not 0.0 < args.sample <= 1.0:
        raise SystemExit(f"mutate: error: --sample must be in (0, 1], got {args.sample}")
    if args.sample is not None and args.retest:
        raise SystemExit("mutate: error: --sample and --retest do not combine (--retest re-runs the survivors)")
    names_by_file = all_mutant_names(folder, files)
    if args.count:
        for f in files:
            print(f"{f:<40} {len(names_by_file[f]):5d}")
        print(f"{'total':<40} {sum(len(v) for v in names_by_file.values()):5d}")
        return 0
    sample: list[str] = []
    if args.sample is not None:
        everything = sorted(n for names in names_by_file.values() for n in names)
        k = max(1, round(args.sample * len(everything)))
        sample = sorted(random.Random(args.sample_seed).sample(everything, k))
        print(f"mutate: sample of {k} / {len(everything)} mutants (seed {args.sample_seed})", flush=True)

    if args.workdir:
        scratch = args.workdir.resolve()
        scratch.mkdir(parents=True, exist_ok=True)
    else:
        scratch = Path(tempfile.mkdtemp(prefix=f"mutate-{folder.name}-"))
    pkg = scratch / folder.relative_to(source)
    if args.retest and not (pkg / "mutants").is_dir():
        raise SystemExit("mutate: error: --retest needs a --workdir from an earlier run")
    print(f"mutate: {args.package}: mutmut {mutmut.__version__}, modules {', '.join(files)}", flush=True)
    print(f"mutate: scratch copy of {source} in {scratch}", flush=True)
    copy_tree(source, scratch)
    (scratch / ".mutate").mkdir(exist_ok=True)
    (scratch / ".mutate" / "mutate_gc_freeze.py").write_text(GC_FREEZE, encoding="utf-8")
    preload = scratch / ".mutate" / f"preload-{folder.name}.txt"
    preload.write_text("\n".join([*third_party_imports(scratch, pkg, tests), "mutate_gc_freeze"]) + "\n",
                       encoding="utf-8")
    write_mutmut_config(pkg, files, tests, preload)
    (pkg / "mutants" / "src").mkdir(parents=True, exist_ok=True)  # exists before Python caches sys.path
    env = scratch_env(scratch, pkg, args.threads)
    imported = check_imports(pkg, scratch, env)
    print("mutate: tests import " + ", ".join(f"{m} from {Path(p).parent}" for m, p in imported.items()), flush=True)

    mutant_args: list[str] = list(sample)
    if args.retest:
        mutant_args = not_caught_names(pkg, files)
        (pkg / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)  # re-map tests to functions
        if not mutant_args:
            print("mutate: nothing to retest")
    log = scratch / f"mutmut-{folder.name}.log"
    start = time.monotonic()
    if not args.retest or mutant_args:
        print(f"mutate: running mutmut (log: {log}) ...", flush=True)
        with log.open("w") as out:
            proc = subprocess.run([sys.executable, "-c", MUTMUT, "run", "--max-children", str(args.max_children),
                                   *mutant_args], cwd=pkg, env=env, stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-40:]
            print("\n".join(tail), file=sys.stderr)
            raise SystemExit(f"mutate: error: mutmut exited {proc.returncode} (log: {log}, scratch: {scratch})")
    minutes = (time.monotonic() - start) / 60

    results = collect_results(pkg, files)
    if sample:
        chosen = set(sample)
        results = [r for r in results if r["name"] in chosen]
    not_caught = [r for r in results if r["status"] in NOT_CAUGHT]
    stale = match_equivalent(not_caught, entries, files)
    summary = summarize(results, stale)
    if sample:
        summary["sample"] = {"fraction": args.sample, "seed": args.sample_seed, "size": len(sample),
                             "score_95ci": wilson(summary["caught"], summary["caught"] + summary["not_caught"])}
        low, high = summary["sample"]["score_95ci"]
        print(f"\nmutate: sampled run: score estimated from {len(sample)} mutants, 95% interval "
              f"{pct(low)}-{pct(high)}")
    print_report(args.package, summary, results, stale, minutes, args.full_diff)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "package": args.package, "source": str(source), "mutmut": mutmut.__version__,
            "modules": files, "tests": tests, "minutes": round(minutes, 2),
            "equivalent_file": str(equivalent_path) if entries else None,
            **summary,
            "not_caught": [{k: r[k] for k in ("name", "module", "function", "status", "line", "change", "diff")}
                           | ({"equivalent": r["equivalent"]} if "equivalent" in r else {}) for r in not_caught],
            "stale_equivalent": stale,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nmutate: wrote {args.json}")
    if args.workdir is None:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"mutate: scratch copy kept in {scratch} (same --workdir resumes; add --retest after changing tests)")
    if args.fail_under is not None and (summary["score_without_equivalent"] or 0) * 100 < args.fail_under:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
