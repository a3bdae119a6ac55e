from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
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


# --- second round: markers, symlinked inputs, claims that race another process ------------


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    yield
    os.umask(old)


@pytest.mark.parametrize("marker", ["[1]", "{}", '{"kind": 5}', '{"kind": ""}', '{"kind": null}', '"demo"'])
def test_a_marker_without_a_kind_name_is_an_unknown_output(tmp_path: Path, marker: str) -> None:
    (tmp_path / OUTPUT_MARKER).write_text(marker)
    with _raises(f"{tmp_path} holds a unknown output, not a demo output; choose another folder"):
        check_output_dir(tmp_path, "demo")


def test_a_marker_is_read_as_utf8_whatever_the_locale(tmp_path: Path, c_locale: None) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / OUTPUT_MARKER).write_bytes('{"kind": "démo"}'.encode())
    assert claim_output_dir(tmp_path / "run", "démo") == tmp_path / "run"
    with _raises(f"{tmp_path / 'run'} holds a démo output, not a demo output; choose another folder"):
        check_output_dir(tmp_path / "run", "demo")


def test_claim_makes_missing_parents_and_a_folder_with_the_umask_mode(
    tmp_path: Path, umask_027: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slimkit.paths

    staged: list[Path] = []
    real_save_json = slimkit.paths.save_json

    def spy(path: Path, obj: Any) -> Path:
        staged.append(Path(path).parent)
        return real_save_json(path, obj)

    monkeypatch.setattr(slimkit.paths, "save_json", spy)
    out = claim_output_dir(tmp_path / "x" / "y" / "run", "demo")
    assert out.is_dir() and stat.S_IMODE(out.stat().st_mode) == 0o750
    assert stat.S_IMODE((out / OUTPUT_MARKER).stat().st_mode) == 0o640
    # the marker is written into a hidden sibling first, then renamed into place (same file system)
    assert len(staged) == 1 and staged[0].parent == tmp_path / "x" / "y"
    assert staged[0].name.startswith(".run.claim-")
    assert _tree(tmp_path) == ["x", "x/y", "x/y/run", f"x/y/run/{OUTPUT_MARKER}"]


def _race(monkeypatch: pytest.MonkeyPatch, target: Path, marker: str | None) -> None:
    """Another process fills ``target`` just before this claim renames its staging folder."""
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(dst) == target and not target.exists():
            target.mkdir()
            if marker is not None:
                (target / OUTPUT_MARKER).write_text(json.dumps({"kind": marker}))
            (target / "log.txt").write_text("x")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_claim_racing_a_claim_of_the_same_kind_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # two ranks of `accelerate launch` claim the same run folder at once
    _race(monkeypatch, tmp_path / "run", "train")
    assert claim_output_dir(tmp_path / "run", "train") == tmp_path / "run"
    assert _tree(tmp_path) == ["run", f"run/{OUTPUT_MARKER}", "run/log.txt"]
    assert json.loads((tmp_path / "run" / OUTPUT_MARKER).read_text()) == {"kind": "train"}


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("deploy", "{run} holds a deploy output, not a train output; choose another folder"),
        (None, "{run} is not empty and was not written by train; choose a new or empty folder"),
    ],
)
def test_claim_racing_another_writer_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marker: str | None, message: str
) -> None:
    _race(monkeypatch, tmp_path / "run", marker)
    with _raises(message.format(run=tmp_path / "run")):
        claim_output_dir(tmp_path / "run", "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left behind
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted([OUTPUT_MARKER, "log.txt"][marker is None :])


@pytest.mark.parametrize("sub", ["a/run", "a/b/run"])
def test_claim_when_a_file_appears_in_the_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sub: str) -> None:
    import slimkit.paths

    real_check = slimkit.paths.check_output_dir

    def check_then_race(path: Any, kind: str) -> Path:
        p = real_check(path, kind)
        (tmp_path / "a").write_text("appeared after the check")
        return p

    monkeypatch.setattr(slimkit.paths, "check_output_dir", check_then_race)
    with _raises(f"cannot write to {tmp_path / sub}: a file is in the way"):
        claim_output_dir(str(tmp_path / sub), "demo")


def test_claim_refused_by_the_file_system_after_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal ``os.access`` did not foresee (an ACL, a read-only bind mount) is the same one line."""

    def refuse(*args: Any, **kwargs: Any) -> str:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with _raises(f"cannot write to {tmp_path / 'run'}: permission denied"):
        claim_output_dir(str(tmp_path / "run"), "demo")


def test_unlistable_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that can be entered but not listed (mode 0o300), for root too."""
    (tmp_path / "d").mkdir()

    def refuse(self: Path) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refuse)
    with _raises(f"cannot write to {tmp_path / 'd'}: permission denied"):
        check_output_dir(tmp_path / "d", "demo")
    with _raises(f"cannot read dataset {tmp_path / 'd'}: permission denied"):
        check_input_dir(tmp_path / "d", "dataset")


def test_symlinked_inputs_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "w.safetensors").write_bytes(b"1")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    (tmp_path / "w.safetensors").symlink_to(tmp_path / "data" / "w.safetensors")
    assert check_input_dir(tmp_path / "link", "dataset") == tmp_path / "link"
    assert check_input_file(tmp_path / "w.safetensors", "weights", [".safetensors"]) == tmp_path / "w.safetensors"
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with _raises(f"dataset not found: {tmp_path / 'gone'}"):
        check_input_dir(tmp_path / "gone", "dataset")


def test_inputs_with_a_name_too_long_are_not_found(tmp_path: Path) -> None:
    long = tmp_path / ("x" * 300)
    with _raises(f"weights not found: {long}"):
        check_input_file(long, "weights")
    with _raises(f"dataset not found: {long}"):
        check_input_dir(long, "dataset")


def test_input_file_suffix_message_lists_every_suffix(tmp_path: Path) -> None:
    (tmp_path / "w.txt").write_text("x")
    with _raises(f"weights {tmp_path / 'w.txt'} is not one of .safetensors, .bin"):
        check_input_file(tmp_path / "w.txt", "weights", [".safetensors", ".bin"])
