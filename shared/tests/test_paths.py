from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slimkit.errors import BadInputError
from slimkit.paths import (
    OUTPUT_MARKER,
    check_input_dir,
    check_input_file,
    check_output_dir,
    check_output_file,
    claim_output_dir,
)

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_permissions = pytest.mark.skipif(ROOT, reason="root ignores permission bits")


def _raises(message: str) -> Any:
    return pytest.raises(BadInputError, match=f"^{re.escape(message)}$")


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def readonly(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


# --- check_output_dir / claim_output_dir -------------------------------------------------


def test_output_dir_new_and_empty_are_fine_and_nothing_is_written(tmp_path: Path) -> None:
    assert check_output_dir(tmp_path / "a" / "b", "demo") == tmp_path / "a" / "b"
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", "demo") == tmp_path / "empty"
    assert check_output_dir(str(tmp_path / "x"), "demo") == tmp_path / "x"
    assert _tree(tmp_path) == ["empty"]


def test_output_dir_existing_file(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    with _raises(f"{f} is a file, expected a folder"):
        check_output_dir(f, "demo")
    with _raises(f"{f} is a file, expected a folder"):
        claim_output_dir(f, "demo")


def test_output_dir_under_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    with _raises(f"cannot write to {f / 'sub' / 'out'}: {f} is a file, not a folder"):
        check_output_dir(f / "sub" / "out", "demo")
    assert _tree(tmp_path) == ["f.txt"]


def test_output_dir_of_another_kind(tmp_path: Path) -> None:
    run = claim_output_dir(tmp_path / "run", "nm-sparse train")
    with _raises(f"{run} holds a nm-sparse train output, not a nm-sparse deploy output; choose another folder"):
        check_output_dir(run, "nm-sparse deploy")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / OUTPUT_MARKER).write_text("{torn")
    with _raises(f"{bad} holds a unknown output, not a demo output; choose another folder"):
        check_output_dir(bad, "demo")


def test_output_dir_not_empty_without_marker(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with _raises(f"{tmp_path / 'mine'} is not empty and was not written by demo; choose a new or empty folder"):
        claim_output_dir(tmp_path / "mine", "demo")
    assert _tree(tmp_path / "mine") == ["notes.txt"]


def test_claim_writes_the_marker_and_allows_reuse_of_the_same_kind(tmp_path: Path) -> None:
    out = claim_output_dir(tmp_path / "a" / "out", "demo")
    assert out == tmp_path / "a" / "out" and out.is_dir()
    assert json.loads((out / OUTPUT_MARKER).read_text()) == {"kind": "demo"}
    (out / "result.txt").write_text("x")
    before = (out / OUTPUT_MARKER).stat().st_mtime_ns
    assert claim_output_dir(out, "demo") == out  # re-run / resume
    assert check_output_dir(out, "demo") == out
    assert (out / OUTPUT_MARKER).stat().st_mtime_ns == before
    (tmp_path / "empty").mkdir()
    claim_output_dir(tmp_path / "empty", "demo")
    assert (tmp_path / "empty" / OUTPUT_MARKER).is_file()


@needs_permissions
def test_output_dir_permission_denied(readonly: Path) -> None:
    with _raises(f"cannot write to {readonly / 'out'}: permission denied"):
        check_output_dir(readonly / "out", "demo")
    with _raises(f"cannot write to {readonly}: permission denied"):
        claim_output_dir(readonly, "demo")


def test_output_dir_unwritable_for_root_too(tmp_path: Path) -> None:
    """A place nobody can write to, root included: a /proc folder."""
    if not Path("/proc/self").is_dir() or os.access("/proc/self", os.W_OK):
        pytest.skip("needs a /proc folder that refuses writes")
    with _raises("cannot write to /proc/self/slimkit-out: permission denied"):
        check_output_dir("/proc/self/slimkit-out", "demo")
    with _raises("cannot write to /proc/self/out.json: permission denied"):
        check_output_file("/proc/self/out.json", [".json"])


# --- check_output_file -------------------------------------------------------------------


def test_output_file_ok_and_nothing_written(tmp_path: Path) -> None:
    assert check_output_file(tmp_path / "new" / "m.json", [".json"]) == tmp_path / "new" / "m.json"
    existing = tmp_path / "r.JSON"
    existing.write_text("{}")
    assert check_output_file(existing, [".json", ".csv"]) == existing  # overwritten on write
    assert check_output_file(tmp_path / "a.tar.gz", [".tar.gz"]) == tmp_path / "a.tar.gz"
    assert _tree(tmp_path) == ["r.JSON"]


def test_output_file_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "d.json").mkdir()
    with _raises(f"{tmp_path / 'd.json'} is a folder, expected a file"):
        check_output_file(tmp_path / "d.json", [".json"])


def test_output_file_wrong_extension(tmp_path: Path) -> None:
    with _raises(f"cannot write {tmp_path / 'r.txt'}: use one of .json, .csv"):
        check_output_file(tmp_path / "r.txt", [".json", ".csv"])
    with _raises(f"cannot write {tmp_path / 'json'}: use one of .json"):
        check_output_file(tmp_path / "json", [".json"])
    with _raises(f"cannot write {tmp_path / '.json'}: use one of .json"):
        check_output_file(tmp_path / ".json", [".json"])


def test_output_file_under_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    with _raises(f"cannot write to {f / 'r.json'}: {f} is a file, not a folder"):
        check_output_file(f / "r.json", [".json"])


@needs_permissions
def test_output_file_permission_denied(readonly: Path) -> None:
    with _raises(f"cannot write to {readonly / 'r.json'}: permission denied"):
        check_output_file(readonly / "r.json", [".json"])


# --- check_input_file / check_input_dir --------------------------------------------------


def test_input_file(tmp_path: Path) -> None:
    ok = tmp_path / "w.safetensors"
    ok.write_bytes(b"1")
    assert check_input_file(ok, "weights") == ok
    assert check_input_file(str(ok), "weights", [".safetensors"]) == ok
    with _raises(f"weights not found: {tmp_path / 'nope'}"):
        check_input_file(tmp_path / "nope", "weights")
    with _raises(f"weights {tmp_path} is a folder, expected a file"):
        check_input_file(tmp_path, "weights")
    (tmp_path / "empty.safetensors").touch()
    with _raises(f"weights {tmp_path / 'empty.safetensors'} is empty"):
        check_input_file(tmp_path / "empty.safetensors", "weights")
    (tmp_path / "w.txt").write_text("x")
    with _raises(f"weights {tmp_path / 'w.txt'} is not one of .safetensors"):
        check_input_file(tmp_path / "w.txt", "weights", [".safetensors"])
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with _raises(f"weights not found: {tmp_path / 'dangling'}"):
        check_input_file(tmp_path / "dangling", "weights")


@needs_permissions
def test_input_file_unreadable(tmp_path: Path) -> None:
    f = tmp_path / "secret.json"
    f.write_text("{}")
    f.chmod(0)
    try:
        with _raises(f"cannot read config {f}: permission denied"):
            check_input_file(f, "config")
    finally:
        f.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_input_dir(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x").write_text("1")
    assert check_input_dir(tmp_path / "data", "dataset") == tmp_path / "data"
    with _raises(f"dataset not found: {tmp_path / 'nope'}"):
        check_input_dir(tmp_path / "nope", "dataset")
    with _raises(f"dataset {tmp_path / 'data' / 'x'} is a file, expected a folder"):
        check_input_dir(tmp_path / "data" / "x", "dataset")
    (tmp_path / "hollow").mkdir()
    with _raises(f"dataset {tmp_path / 'hollow'} is empty"):
        check_input_dir(tmp_path / "hollow", "dataset")


def test_permission_messages_with_access_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The permission branches for root too (root passes permission bits, so fake ``os.access``)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "in.json").write_text("{}")
    monkeypatch.setattr("slimkit.paths.os.access", lambda *a, **k: False)
    with _raises(f"cannot write to {tmp_path / 'new'}: permission denied"):
        check_output_dir(tmp_path / "new", "demo")
    with _raises(f"cannot write to {tmp_path / 'empty'}: permission denied"):
        claim_output_dir(tmp_path / "empty", "demo")
    with _raises(f"cannot write to {tmp_path / 'r.json'}: permission denied"):
        check_output_file(tmp_path / "r.json", [".json"])
    with _raises(f"cannot read config {tmp_path / 'in.json'}: permission denied"):
        check_input_file(tmp_path / "in.json", "config")
    assert _tree(tmp_path) == ["empty", "in.json"]


def test_a_folder_being_claimed_never_looks_foreign_to_a_concurrent_check(tmp_path: Path) -> None:
    # under `accelerate launch` the other ranks check the run folder while rank 0 claims it
    import threading

    from slimkit.paths import check_output_dir, claim_output_dir

    seen: list[str] = []
    stop = threading.Event()
    targets = [tmp_path / f"run{i}" for i in range(150)]

    def watch() -> None:
        while not stop.is_set():
            for t in targets:
                try:
                    check_output_dir(t, "train")
                except Exception as exc:  # any refusal is the bug
                    seen.append(str(exc))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for t in targets:
            claim_output_dir(t, "train")
    finally:
        stop.set()
        watcher.join()
    assert seen == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t.name for t in targets)  # no staging leftovers
