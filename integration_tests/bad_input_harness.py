"""The bad-input harness: one table of bad inputs per CLI subcommand, run against every console script.

A row is a :class:`BadInput`. Every package adds its rows as a module in
``integration_tests/bad_input_rows/`` (``slimkit.py``, ``token_rate.py``, ``nm_sparse.py``)
that defines ``ROWS: list[BadInput]``; ``test_bad_inputs.py`` collects them all. For every
row the console script must exit with code 2 and print exactly one non-empty stderr line
that contains ``error:`` and the row's ``expect`` (case-insensitive), no traceback, and
leave nothing new or changed on disk, neither under the row's tmp dir nor in the current
working directory (a fresh empty folder).

Writing a row::

    BadInput("demo-output-is-a-file", ["slimkit", "demo", "--output", "{tmp}/f.txt"],
             expect="is a file, expected a folder", setup=lambda tmp: (tmp / "f.txt").write_text("x"))

``argv[0]`` is the console-script name; every other element containing ``{tmp}`` is
formatted with the row's tmp dir (``str.format(tmp=...)``, so write ``{{`` for a literal
brace); ``setup(tmp)`` prepares that dir before the snapshot is taken.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import pkgutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from slimkit.paths import OUTPUT_MARKER

ROWS_PACKAGE = "bad_input_rows"
ROWS_DIR = Path(__file__).resolve().parent / ROWS_PACKAGE


@dataclass
class BadInput:
    """One bad invocation of a console script and what its one-line error must say."""

    id: str
    argv: list[str]
    expect: str
    setup: Callable[[Path], None] | None = None

    def command(self, tmp: Path) -> list[str]:
        """``argv`` with ``{tmp}`` filled in."""
        return [arg.format(tmp=str(tmp)) if "{tmp}" in arg else arg for arg in self.argv]


# Setup builders the row tables share: the inputs every CLI must refuse look the same everywhere.
def file_at(name: str, data: str | bytes = "x") -> Callable[[Path], None]:
    """A file ``name`` (text or bytes): a file where a folder is expected, or a broken input."""

    def setup(tmp: Path) -> None:
        target = tmp / name
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data)

    return setup


def folder_at(name: str, *files: str) -> Callable[[Path], None]:
    """A folder ``name`` holding ``files`` (a folder where a file is expected, or not empty and not ours)."""

    def setup(tmp: Path) -> None:
        (tmp / name).mkdir()
        for rel in files:
            (tmp / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name / rel).write_text("x")

    return setup


def output_of(kind: str, name: str = "out") -> Callable[[Path], None]:
    """A folder another command wrote: its output marker names ``kind``."""

    def setup(tmp: Path) -> None:
        (tmp / name).mkdir()
        (tmp / name / OUTPUT_MARKER).write_text(json.dumps({"kind": kind}))
        (tmp / name / "metrics.jsonl").write_text("{}\n")

    return setup


def load_rows() -> dict[str, list[BadInput]]:
    """``module name -> ROWS`` for every module in ``bad_input_rows/``."""
    here = str(ROWS_DIR.parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    tables: dict[str, list[BadInput]] = {}
    for info in sorted(pkgutil.iter_modules([str(ROWS_DIR)]), key=lambda m: m.name):
        module = importlib.import_module(f"{ROWS_PACKAGE}.{info.name}")
        rows = list(getattr(module, "ROWS", []))
        for row in rows:
            if not isinstance(row, BadInput):
                raise TypeError(f"{ROWS_PACKAGE}/{info.name}.py: ROWS holds {row!r}, not a BadInput")
        tables[info.name] = rows
    return tables


Snapshot = dict[str, tuple[str, int, int]]


def snapshot(*roots: Path) -> Snapshot:
    """Every file and folder under ``roots`` (the roots included) with kind, size and mtime."""
    found: Snapshot = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            st = os.stat(folder)
            found[folder] = ("dir", 0, st.st_mtime_ns)
            for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                path = os.path.join(folder, name)
                st = os.lstat(path)
                found[path] = ("file", st.st_size, st.st_mtime_ns)
    return found


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    """What changed on disk, one readable line per path."""
    lines = [f"new: {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"removed: {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"changed: {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines


def console_main(name: str) -> Callable[[Sequence[str]], int | None]:
    """The ``main`` function behind console script ``name``."""
    matches = entry_points(group="console_scripts").select(name=name)
    if not matches:
        raise LookupError(f"no console script named {name!r} is installed")
    return next(iter(matches)).load()  # type: ignore[no-any-return]


def run_in_process(argv: Sequence[str]) -> tuple[int, str, str]:
    """Call the console script's ``main(argv[1:])``; returns (code, stdout, stderr).

    Output is captured at the ``sys.stdout``/``sys.stderr`` level here; the test also
    captures file descriptors (capfd) so C-level writes count too.
    """
    main = console_main(argv[0])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv[1:]))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return int(code or 0), out.getvalue(), err.getvalue()


def script_path(name: str) -> str:
    """The installed console script: beside this interpreter (the venv), else on ``PATH``."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    import shutil

    found = shutil.which(name)
    if found is None:
        raise LookupError(f"console script {name!r} is not on PATH")
    return found


def run_subprocess(argv: Sequence[str], cwd: Path) -> tuple[int, str, str]:
    """Run the real console script as a process in ``cwd``."""
    env = {**os.environ, "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "")}
    proc = subprocess.run([script_path(argv[0]), *argv[1:]], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def problems(code: int, out: str, err: str, row: BadInput) -> list[str]:
    """Everything wrong with one run of a bad-input row (empty: it behaved)."""
    found = []
    if code != 2:
        found.append(f"exit code {code}, expected 2")
    lines = err.splitlines()
    if len(lines) != 1 or not lines[0].strip():
        found.append(f"stderr must be exactly one non-empty line, got {len(lines)}: {err!r}")
    if "error:" not in err:
        found.append(f"stderr lacks 'error:': {err!r}")
    if row.expect.lower() not in err.lower():
        found.append(f"stderr lacks {row.expect!r}: {err!r}")
    if "Traceback" in out + err:
        found.append("a traceback was printed")
    return found
