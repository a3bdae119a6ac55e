"""Every console script refuses every row of ``bad_input_rows/`` the same way (see ``bad_input_harness``).

In-process calls for speed (``main(argv[1:])`` of the installed entry point), plus one real
process per console script to prove the binary behaves like the in-process call.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bad_input_harness import BadInput, diff, load_rows, problems, run_in_process, run_subprocess, snapshot

TABLES = load_rows()
ROWS: list[tuple[str, BadInput]] = [(module, row) for module, rows in TABLES.items() for row in rows]
FIRST_PER_SCRIPT: dict[str, tuple[str, BadInput]] = {}
for _module, _row in ROWS:
    FIRST_PER_SCRIPT.setdefault(_row.argv[0], (_module, _row))


def _prepare(row: BadInput, tmp: Path) -> None:
    if row.setup is not None:
        row.setup(tmp)


def test_row_tables_are_well_formed() -> None:
    ids = [f"{module}:{row.id}" for module, row in ROWS]
    assert len(ids) == len(set(ids)), "row ids must be unique within a module"
    for module, rows in TABLES.items():
        assert rows, f"bad_input_rows/{module}.py has no ROWS"
        for row in rows:
            assert row.argv and row.expect, f"{module}:{row.id} needs argv[0] (the script) and expect"
    summary = ", ".join(f"{module}: {len(rows)}" for module, rows in TABLES.items())
    print(f"\nbad-input rows per module: {summary} (total {len(ROWS)}, "
          f"{len(FIRST_PER_SCRIPT)} console scripts: {', '.join(sorted(FIRST_PER_SCRIPT))})")


@pytest.mark.parametrize(("module", "row"), ROWS, ids=[f"{m}:{r.id}" for m, r in ROWS])
def test_bad_input_in_process(module: str, row: BadInput, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                              monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    _prepare(row, tmp_path)
    before = snapshot(tmp_path, cwd)
    code, out, err = run_in_process(row.command(tmp_path))
    fd_out, fd_err = capfd.readouterr()  # anything written past sys.stdout/sys.stderr
    found = problems(code, out + fd_out, err + fd_err, row)
    found += diff(before, snapshot(tmp_path, cwd))
    assert not found, f"{module}:{row.id} {row.command(tmp_path)}:\n" + "\n".join(found)


@pytest.mark.parametrize(("module", "row"), list(FIRST_PER_SCRIPT.values()),
                         ids=[f"{script}={m}:{r.id}" for script, (m, r) in FIRST_PER_SCRIPT.items()])
def test_bad_input_real_process(module: str, row: BadInput, tmp_path: Path,
                                tmp_path_factory: pytest.TempPathFactory) -> None:
    cwd = tmp_path_factory.mktemp("cwd")
    _prepare(row, tmp_path)
    before = snapshot(tmp_path, cwd)
    code, out, err = run_subprocess(row.command(tmp_path), cwd)
    found = problems(code, out, err, row) + diff(before, snapshot(tmp_path, cwd))
    assert not found, f"{module}:{row.id} {row.command(tmp_path)}:\n" + "\n".join(found)
