from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from torch import nn

from slimkit.errors import BadInputError, CorruptFileError
from slimkit.io import (
    _untie,
    atomic_path,
    atomic_write,
    config_from_dict,
    config_to_dict,
    current_umask,
    load_checked_state_dict,
    load_config,
    load_into,
    load_json,
    load_model_files,
    load_state_dict,
    save_checked_state_dict,
    save_config,
    save_json,
    save_model,
    save_state_dict,
    save_table,
    short_list,
    state_digest,
)


@dataclass
class Inner:
    k: int = 3


@dataclass
class Cfg:
    name: str = "x"
    ratio: float = 0.5
    dims: list[int] = field(default_factory=lambda: [1, 2])
    inner: Inner = field(default_factory=Inner)


def test_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name an fd's file")
@pytest.mark.parametrize("writer", ["save_json", "save_state_dict"])
def test_atomic_writes_fsync_the_file_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    # safetensors writes through a path (atomic_path), save_json through a handle (atomic_write):
    # both must reach the disk before the name points at them, or a crash leaves an empty file.
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", os.fspath(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / ("out.json" if writer == "save_json" else "out.safetensors")
    if writer == "save_json":
        save_json(target, {"a": 1})
    else:
        save_state_dict(target, {"a": torch.ones(3)})
    renames = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert len(renames) == 1
    tmp = events[renames[0]][1]
    assert ("fsync", tmp) in events[: renames[0]]
    assert ("fsync", str(tmp_path)) in events[renames[0] + 1 :]
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_atomic_path_removes_its_temp_file_when_the_block_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "a" / "b.bin", "wb") as fh:
        fh.write(b"\x00\x01")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"


def test_config_roundtrip_and_unknown_keys() -> None:
    cfg = Cfg(name="y", dims=[4], inner=Inner(7))
    data = config_to_dict(cfg)
    assert data["_type"] == "Cfg" and data["inner"]["k"] == 7
    back = config_from_dict(Cfg, json.loads(json.dumps(data)))
    assert back.name == "y" and back.dims == [4]
    with pytest.raises(BadInputError, match="unknown Cfg field"):
        config_from_dict(Cfg, {"nmae": "typo"})
    with pytest.raises(BadInputError, match="expected Cfg"):
        config_from_dict(Cfg, {"_type": "Other"})


def test_json_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not found"):
        load_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CorruptFileError):
        load_json(bad)
    save_json(tmp_path / "ok.json", {"a": [1, 2]})
    assert load_json(tmp_path / "ok.json") == {"a": [1, 2]}


def test_safetensors_roundtrip_with_metadata_and_tied(tmp_path: Path) -> None:
    w = torch.randn(3, 4)
    save_state_dict(tmp_path / "m.safetensors", {"a": w, "b": w, "c": torch.arange(5)}, {"step": 3})
    tensors, meta = load_state_dict(tmp_path / "m.safetensors")
    assert torch.equal(tensors["a"], w) and torch.equal(tensors["b"], w)
    assert meta == {"step": 3}


def test_corrupt_safetensors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(CorruptFileError, match="safetensors"):
        load_state_dict(bad)


def test_save_model_and_mismatch(tmp_path: Path) -> None:
    model = nn.Linear(4, 2)
    save_model(tmp_path / "m", model, Cfg(), {"acc": 0.9})
    sd, cfg = load_model_files(tmp_path / "m")
    assert cfg["config"]["_type"] == "Cfg" and cfg["acc"] == 0.9
    other = nn.Linear(4, 2)
    load_into(other, sd)
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(BadInputError, match="shape mismatch"):
        load_into(nn.Linear(5, 2), sd)
    with pytest.raises(BadInputError, match="missing"):
        load_into(nn.Sequential(nn.Linear(4, 2)), sd)


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask) and None
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_umask_mode(tmp_path: Path, umask: Callable[[int], None], mask: int, expected: int) -> None:
    umask(mask)
    assert current_umask() == mask
    with atomic_write(tmp_path / "a.txt") as fh:
        fh.write("x")
    save_json(tmp_path / "b.json", {"a": 1})
    save_state_dict(tmp_path / "c.safetensors", {"w": torch.zeros(2)})
    with atomic_path(tmp_path / "d.bin") as tmp:
        tmp.write_bytes(b"1")
    for name in ("a.txt", "b.json", "c.safetensors", "d.bin"):
        assert _mode(tmp_path / name) == expected, name
    # what plain open() gives a new file, for comparison
    (tmp_path / "plain").write_text("x")
    assert _mode(tmp_path / "plain") == expected


def test_overwrite_keeps_the_existing_mode(tmp_path: Path, umask: Callable[[int], None]) -> None:
    umask(0o022)
    for name in ("a.txt", "b.json", "c.safetensors", "d.bin"):
        (tmp_path / name).write_text("old")
        os.chmod(tmp_path / name, 0o640)
    with atomic_write(tmp_path / "a.txt") as fh:
        fh.write("new")
    save_json(tmp_path / "b.json", {"a": 2})
    save_state_dict(tmp_path / "c.safetensors", {"w": torch.ones(2)})
    with atomic_path(tmp_path / "d.bin") as tmp:
        tmp.write_bytes(b"2")
    for name in ("a.txt", "b.json", "c.safetensors", "d.bin"):
        assert _mode(tmp_path / name) == 0o640, name
    assert (tmp_path / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.safetensors", "d.bin"]


def test_current_umask_leaves_the_umask_alone(umask: Callable[[int], None]) -> None:
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027


# --- second round: exact messages, type checks of config fields, partial loads ------------


def _raises_exactly(exc: type[Exception], message: str) -> Any:
    return pytest.raises(exc, match=f"^{re.escape(message)}$")


@dataclass
class Other:
    k: str = "o"


@dataclass
class Typed:
    i: int = 0
    f: float = 0.0
    b: bool = False
    s: str = ""
    anything: Any = None
    opt: int | None = None
    either: int | str = 0
    mode: Literal["a", "b"] = "a"
    ints: list[int] = field(default_factory=list)
    seq: Sequence[float] = ()
    bare_list: list = field(default_factory=list)  # type: ignore[type-arg]
    pair: tuple[int, str] = (0, "")
    one: tuple[int] = (0,)
    many: tuple[int, ...] = ()
    table: dict[str, int] = field(default_factory=dict)
    bare_dict: dict = field(default_factory=dict)  # type: ignore[type-arg]
    path: Path = Path("out")
    inner: Inner = field(default_factory=Inner)
    maybe_inner: Inner | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)  # a field of another class: the dataclass converts it itself


@dataclass
class Holder:
    child: Inner | Other = field(default_factory=Inner)
    table: dict[str, int] = field(default_factory=dict)
    maybe: Inner | None = None


@dataclass
class Checked:
    ratio: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be\n    in (0, 1], got {self.ratio}")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("i", 3),
        ("f", 1),  # an int is a fine float
        ("f", 1.5),
        ("b", True),
        ("s", "x"),
        ("anything", "x"),
        ("anything", [1, "a"]),
        ("opt", None),
        ("opt", 3),
        ("either", 3),
        ("either", "x"),
        ("mode", "b"),
        ("ints", [1, 2, 3]),
        ("ints", []),
        ("seq", [1, 2.5]),
        ("bare_list", [1, "a", None]),
        ("pair", [1, "a"]),
        ("one", [5]),
        ("many", [1, 2, 3]),
        ("many", []),
        ("table", {"a": 1, "b": 2}),
        ("bare_dict", {"a": "x", "b": [1]}),
        ("path", "runs/a"),  # other classes: the dataclass itself validates
        ("maybe_inner", None),
    ],
)
def test_config_field_values_of_the_right_type_load(name: str, value: Any) -> None:
    got = getattr(config_from_dict(Typed, {name: value}), name)
    if name == "path":
        assert got == Path(value)
    else:
        assert (list(got) if isinstance(value, list) else got) == value


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("i", True, "int"),
        ("i", "3", "int"),
        ("i", 1.5, "int"),
        ("f", True, "float"),
        ("f", "1.0", "float"),
        ("b", 1, "bool"),
        ("s", 3, "str"),
        ("opt", "x", "int | None"),
        ("either", 1.5, "int | str"),
        ("mode", "c", "Literal['a', 'b']"),
        ("ints", "abc", "list[int]"),
        ("ints", {"a": 1}, "list[int]"),
        ("ints", [1, "a"], "list[int]"),
        ("seq", ["x"], "collections.abc.Sequence[float]"),
        ("bare_list", {"a": 1}, "list"),
        ("pair", [1, 2], "tuple[int, str]"),
        ("pair", [1], "tuple[int, str]"),
        ("pair", [1, "a", 3], "tuple[int, str]"),
        ("one", [1, 2], "tuple[int]"),
        ("one", ["a"], "tuple[int]"),
        ("many", [1, "a"], "tuple[int, ...]"),
        ("table", {"a": "x"}, "dict[str, int]"),
        ("table", [1], "dict[str, int]"),
        ("bare_dict", [1], "dict"),
        ("inner", 5, "Inner"),
        ("inner", "x", "Inner"),
        ("maybe_inner", 5, f"{__name__}.Inner | None"),
    ],
)
def test_config_field_values_of_the_wrong_type_are_refused_naming_the_field(
    name: str, value: Any, expected: str
) -> None:
    with _raises_exactly(BadInputError, f"Typed.{name} must be {expected}, got {type(value).__name__} {value!r}"):
        config_from_dict(Typed, {name: value})


def test_config_nested_dataclasses_come_back_as_dataclasses() -> None:
    cfg = Cfg(name="y", dims=[4], inner=Inner(7))
    assert config_from_dict(Cfg, json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    assert config_from_dict(Typed, {"inner": {"k": 5}, "maybe_inner": {"k": 2}}).inner == Inner(5)
    assert config_from_dict(Typed, {"maybe_inner": {"k": 2}}).maybe_inner == Inner(2)
    assert config_from_dict(Typed, {"inner": Inner(4)}).inner == Inner(4)  # an instance passes as it is
    data = {"child": {"_type": "Other", "k": "z"}, "table": {"a": 1}, "maybe": {"k": 2}}
    assert config_from_dict(Holder, data) == Holder(Other("z"), {"a": 1}, Inner(2))
    assert config_from_dict(Holder, {"child": {"_type": "Inner", "k": 9}}) == Holder(Inner(9))
    with _raises_exactly(BadInputError, "config has no _type; expected one of Inner or Other"):
        config_from_dict(Holder, {"child": {"k": 1}})


def test_config_from_dict_messages() -> None:
    with _raises_exactly(TypeError, "config_from_dict needs at least one dataclass type"):
        config_from_dict([], {})
    with _raises_exactly(TypeError, "<class 'int'> is not a dataclass"):
        config_from_dict([Inner, int], {})
    with _raises_exactly(BadInputError, "Cfg config must be a JSON object, got list"):
        config_from_dict(Cfg, [1])
    with _raises_exactly(BadInputError, "Inner or Other config must be a JSON object, got str"):
        config_from_dict([Other, Inner], "x")
    with _raises_exactly(BadInputError, "config has no _type; expected one of Inner or Other"):
        config_from_dict([Inner, Other], {"k": 1})
    with _raises_exactly(BadInputError, "config is a Cfg, expected Inner or Other"):
        config_from_dict([Other, Inner], {"_type": "Cfg"})
    with _raises_exactly(BadInputError, "unknown Cfg field(s): aa, zz"):
        config_from_dict(Cfg, {"zz": 1, "aa": 2, "name": "n"})
    with _raises_exactly(BadInputError, "invalid Checked: ratio must be in (0, 1], got 2"):
        config_from_dict(Checked, {"ratio": 2})
    assert config_from_dict([Inner, Other], {"_type": "Other", "k": "q"}) == Other("q")
    assert config_from_dict(Cfg, {"_type": "OldCfg", "name": "n"}, aliases={"OldCfg": Cfg}) == Cfg(name="n")


def test_config_to_dict_exact() -> None:
    assert config_to_dict(Cfg(name="y", dims=[4], inner=Inner(7))) == {
        "_type": "Cfg",
        "_version": 1,
        "name": "y",
        "ratio": 0.5,
        "dims": [4],
        "inner": {"_type": "Inner", "_version": 1, "k": 7},
    }
    data = config_to_dict(Typed(path=Path("runs") / "a", pair=(1, "x"), table={"a": 1}))
    assert data["path"] == "runs/a" and data["pair"] == [1, "x"] and data["table"] == {"a": 1}
    with _raises_exactly(TypeError, "expected a dataclass instance, got type"):
        config_to_dict(Cfg)
    with _raises_exactly(TypeError, "expected a dataclass instance, got dict"):
        config_to_dict({"a": 1})


def test_save_json_writes_indented_json_in_key_order(tmp_path: Path) -> None:
    save_json(tmp_path / "a.json", {"b": 1, "a": [1, "é"]})
    assert (tmp_path / "a.json").read_text(
        encoding="utf-8"
    ) == '{\n  "b": 1,\n  "a": [\n    1,\n    "\\u00e9"\n  ]\n}\n'


def test_load_json_messages_and_utf8_whatever_the_locale(tmp_path: Path, c_locale: None) -> None:
    with _raises_exactly(BadInputError, f"file not found: {tmp_path / 'missing.json'}"):
        load_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(
        CorruptFileError, match=f"^{re.escape(f'{bad} is not valid JSON (Expecting property name')}.*\\)$"
    ):
        load_json(bad)
    raw = tmp_path / "raw.json"
    raw.write_bytes('{"kind": "démo"}'.encode())
    assert load_json(raw) == {"kind": "démo"}


def test_load_json_of_an_unreadable_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a file the user cannot read printed a PermissionError traceback from every CLI that loads JSON
    import errno

    locked = tmp_path / "prompts.json"
    locked.write_text("{}")

    def refuse(self: Path, *args: Any, **kwargs: Any) -> str:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    with _raises_exactly(BadInputError, f"cannot read prompts file {locked}: Permission denied"):
        load_json(locked, "prompts file")


def test_save_and_load_config(tmp_path: Path) -> None:
    cfg = Cfg(name="y", dims=[4], inner=Inner(7))
    assert save_config(tmp_path / "c.json", cfg) == tmp_path / "c.json"
    assert load_json(tmp_path / "c.json") == config_to_dict(cfg)
    assert load_config(tmp_path / "c.json", Cfg) == cfg
    assert load_config(str(tmp_path / "c.json"), [Other, Cfg]) == cfg
    save_json(tmp_path / "old.json", {"_type": "OldInner", "k": 2})
    assert load_config(tmp_path / "old.json", Inner, aliases={"OldInner": Inner}) == Inner(2)
    with _raises_exactly(BadInputError, f"{tmp_path / 'c.json'}: config is a Cfg, expected Other"):
        load_config(tmp_path / "c.json", Other)
    with _raises_exactly(BadInputError, f"file not found: {tmp_path / 'nope.json'}"):
        load_config(tmp_path / "nope.json", Cfg)


def test_state_dict_file_messages_and_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with _raises_exactly(BadInputError, f"file not found: {tmp_path / 'nope.safetensors'}"):
        load_state_dict(tmp_path / "nope.safetensors")
    save_file({"w": torch.ones(2)}, str(tmp_path / "plain.safetensors"))  # written by another tool
    tensors, meta = load_state_dict(tmp_path / "plain.safetensors")
    assert meta == {} and torch.equal(tensors["w"], torch.ones(2))
    save_file({"w": torch.ones(2)}, str(tmp_path / "torn.safetensors"), metadata={"slimkit": "{torn"})
    with _raises_exactly(CorruptFileError, f"{tmp_path / 'torn.safetensors'} has corrupt slimkit metadata"):
        load_state_dict(tmp_path / "torn.safetensors")


def test_three_tied_tensors_save_and_only_repeats_are_copied(tmp_path: Path) -> None:
    w, x = torch.randn(3), torch.randn(2)
    save_state_dict(tmp_path / "t.safetensors", {"a": w, "b": w, "c": w, "d": x})
    tensors, _ = load_state_dict(tmp_path / "t.safetensors")
    assert all(torch.equal(tensors[k], w) for k in "abc") and torch.equal(tensors["d"], x)
    # saving a model must not copy every tensor: only a repeat of a storage already seen is cloned
    out = _untie({"a": w, "b": w, "c": x})
    assert out["a"] is w and out["c"] is x
    assert out["b"] is not w and torch.equal(out["b"], w)


def test_model_files_messages_and_metadata(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    out = save_model(tmp_path / "a" / "b" / "m", model, {"hidden": 4}, {"acc": 0.5})
    assert out == tmp_path / "a" / "b" / "m"
    _, meta = load_state_dict(out / "model.safetensors")
    assert meta == {"config": {"hidden": 4}, "acc": 0.5}
    assert load_model_files(out)[1] == meta
    save_model(tmp_path / "n", model)
    assert load_model_files(tmp_path / "n")[1] == {"config": None}
    with _raises_exactly(BadInputError, f"model directory not found: {tmp_path / 'x'}"):
        load_model_files(tmp_path / "x")
    save_json(out / "config.json", [1])
    with _raises_exactly(CorruptFileError, f"{out / 'config.json'} must hold a JSON object"):
        load_model_files(out)


def _params(**groups: tuple[int, int]) -> nn.ParameterDict:
    """``a=(3, 2)``: parameters a0, a1, a2 of shape (2,)."""
    return nn.ParameterDict(
        {f"{prefix}{i}": nn.Parameter(torch.zeros(size)) for prefix, (n, size) in groups.items() for i in range(n)}
    )


@pytest.mark.parametrize("n", [5, 6])
def test_load_into_lists_at_most_five_of_each_mismatch(n: int) -> None:
    model = _params(a=(n, 1), m=(n, 1))
    state = {**_params(a=(n, 2), u=(n, 1)).state_dict()}
    more = " ..." if n > 5 else ""
    expected = (
        "checkpoint does not fit the model: shape mismatch: "
        + ", ".join(f"a{i} (2,) vs (1,)" for i in range(5))
        + more
        + f"; missing {n} key(s): m0, m1, m2, m3, m4{more}"
        + f"; unexpected {n} key(s): u0, u1, u2, u3, u4{more}"
    )
    with _raises_exactly(BadInputError, expected):
        load_into(model, state)
    with _raises_exactly(BadInputError, "checkpoint does not fit the model: unexpected 1 key(s): u0"):
        load_into(_params(a=(1, 1)), {"a0": torch.ones(1), "u0": torch.ones(1)})


def test_load_into_non_strict_loads_what_fits() -> None:
    model = _params(a=(2, 1))
    load_into(model, {"a0": torch.ones(1), "extra": torch.ones(3)}, strict=False)
    assert model["a0"].item() == 1.0 and model["a1"].item() == 0.0
    with _raises_exactly(BadInputError, "checkpoint does not fit the model: shape mismatch: a1 (2,) vs (1,)"):
        load_into(model, {"a1": torch.ones(2)}, strict=False)


def test_current_umask_reads_proc_without_touching_the_umask(
    umask: Callable[[int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where /proc exists the umask is read, never set: another thread may be creating files meanwhile."""
    try:
        has_proc = "Umask:" in Path("/proc/self/status").read_text()
    except OSError:
        has_proc = False
    if not has_proc:
        pytest.skip("no /proc/self/status with a Umask line")
    umask(0o027)

    def refuse(mask: int) -> int:
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", refuse)
    assert current_umask() == 0o027


@pytest.mark.parametrize("proc", ["missing", "unparsable"])
def test_current_umask_without_a_usable_proc(
    umask: Callable[[int], None], monkeypatch: pytest.MonkeyPatch, proc: str
) -> None:
    import io as std_io

    import slimkit.io

    real_open = open

    def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == "/proc/self/status":
            if proc == "missing":
                raise FileNotFoundError(2, "No such file or directory", file)
            return std_io.StringIO("Name:\tpython\nUmask:\tnot-octal\n")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(slimkit.io, "open", fake_open, raising=False)
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027  # and it was left as it was


def test_save_table_writes_the_result_and_its_markdown(tmp_path: Path) -> None:
    result = {"rows": [{"method": "a", "top1": 0.5}], "markdown": "| method | top-1 |\n| a | 50.0 |"}
    (tmp_path / "t").mkdir()
    save_table(tmp_path / "t", result)
    assert json.loads((tmp_path / "t" / "results.json").read_text()) == result
    assert (tmp_path / "t" / "table.md").read_text() == result["markdown"] + "\n"
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["results.json", "table.md"]


def test_checked_state_dict_round_trip_and_refusals(tmp_path: Path) -> None:
    """What the packed exports share: the tensor list and checksum written, and every kind of damage refused."""
    tensors = {"a": torch.arange(6, dtype=torch.int32).reshape(2, 3), "b": torch.ones(2)}
    written = save_checked_state_dict(tmp_path / "x.safetensors", tensors, {"format": "toy", "format_version": 1})
    assert written["tensors"] == ["a", "b"] and written["sha256"] == state_digest(written, tensors)
    got, meta, path = load_checked_state_dict(tmp_path / "x.safetensors", "toy", 1, "a toy file")
    assert meta == written and path == tmp_path / "x.safetensors" and torch.equal(got["a"], tensors["a"])
    with pytest.raises(CorruptFileError, match=r"is not a toy file \(no 'other' metadata\)$"):
        load_checked_state_dict(tmp_path / "x.safetensors", "other", 1, "a toy file")
    with pytest.raises(CorruptFileError, match=r"has export format version 1; this release reads up to 0$"):
        load_checked_state_dict(tmp_path / "x.safetensors", "toy", 0, "a toy file")
    save_state_dict(tmp_path / "short.safetensors", {"a": tensors["a"]}, written)  # "b" listed, not stored
    with pytest.raises(CorruptFileError, match=r"is missing tensor\(s\) b$"):
        load_checked_state_dict(tmp_path / "short.safetensors", "toy", 1, "a toy file")
    save_state_dict(tmp_path / "edited.safetensors", {**tensors, "b": torch.zeros(2)}, written)
    with pytest.raises(CorruptFileError, match="fails its checksum"):
        load_checked_state_dict(tmp_path / "edited.safetensors", "toy", 1, "a toy file")
    with pytest.raises(BadInputError, match="file not found"):
        load_checked_state_dict(tmp_path / "nope.safetensors", "toy", 1, "a toy file")
    assert short_list({"d", "a", "c", "b", "e"}) == "a, b, c (+2 more)"
