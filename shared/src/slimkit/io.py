"""Atomic file writes and safetensors + JSON save/load with clear errors.

Every file a slimkit tool writes goes through :func:`atomic_write` or
:func:`atomic_path`, so an interrupted run never leaves a half-written output.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import hashlib
import json
import os
import stat
import tempfile
import threading
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import torch
from torch import nn

from slimkit.errors import BadInputError, CorruptFileError

T = TypeVar("T")

_META_KEY = "slimkit"
CONFIG_VERSION = 1


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without leaving it changed (``/proc`` where there is one)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        old = os.umask(0o022)
        os.umask(old)
    return old


def _final_mode(target: Path) -> int:
    """An overwritten file keeps its mode; a new one gets what ``open()`` would give it."""
    try:
        st = target.stat()
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    Whatever the block wrote is fsynced before the rename and the folder after it, so a crash
    leaves either the old file or the complete new one (never an empty or partial file), and
    the temporary file is removed when the block fails.

    The file that lands at ``path`` has the mode a plain ``open(path, "w")`` would give a
    new file (``0o666 & ~umask``, so 0644 under umask 022); overwriting an existing file
    keeps that file's mode.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"nothing was written to {target}")
        _fsync_file(tmp)  # the bytes are on disk before the name points at them
        os.chmod(tmp, _final_mode(target))
        os.replace(tmp, target)
        _fsync_dir(target.parent)  # and the rename itself survives a crash
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_file(path: Path, flags: int = os.O_RDWR) -> None:
    # A writable handle: Windows refuses to flush a read-only one.
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Not every platform or file system can open or fsync a folder; the rename is done either way.
    with contextlib.suppress(OSError):
        _fsync_file(path, os.O_RDONLY)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file for writing; rename it over ``path`` (fsynced, see :func:`atomic_path`) when the block succeeds."""
    if mode not in {"w", "wb"}:
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle


def save_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")
    return Path(path)


def save_table(output: str | os.PathLike[str], result: Mapping[str, Any]) -> None:
    """A method table's two files in ``output``: ``results.json`` (everything) and ``table.md``
    (``result["markdown"]``), each written atomically, the layout every package's ``table`` command uses."""
    save_json(Path(output) / "results.json", result)
    with atomic_write(Path(output) / "table.md") as handle:
        handle.write(str(result["markdown"]) + "\n")


def load_json(path: str | os.PathLike[str], what: str = "") -> Any:
    """Read JSON with a one-line error for a missing or unparsable file, naming it as ``what``
    (``"prompts file"`` gives "prompts file not found: ..." and "prompts file ... is not valid JSON")."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{what or 'file'} not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{what + ' ' if what else ''}{p} is not valid JSON ({exc})") from None
    except OSError as exc:  # unreadable (permissions, I/O error): one line too, not a traceback
        raise BadInputError(f"cannot read {what + ' ' if what else ''}{p}: {exc.strerror or exc}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Serialize a dataclass config to a plain, JSON-ready dict tagged with its type."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    data: dict[str, Any] = {"_type": type(cfg).__name__, "_version": CONFIG_VERSION}
    for field in dataclasses.fields(cfg):
        data[field.name] = _to_jsonable(getattr(cfg, field.name))
    return data


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def config_from_dict(cls: type[T] | Sequence[type], data: Mapping[str, Any], aliases: Mapping[str, type] | None = None) -> T:
    """Rebuild a dataclass config tagged by :func:`config_to_dict`.

    ``cls`` is one dataclass or several: with several, the ``_type`` tag picks the class (a
    package's configs of several methods load through one call). ``aliases`` maps older type
    names to the class that reads them now, so files written by earlier releases still load.
    Unknown keys, an unknown ``_type`` and field values of the wrong JSON type are a
    :class:`BadInputError` naming the field.
    """
    types = [cls] if isinstance(cls, type) else list(cls)
    if not types:
        raise TypeError("config_from_dict needs at least one dataclass type")
    for t in types:
        if not dataclasses.is_dataclass(t):
            raise TypeError(f"{t!r} is not a dataclass")
    by_name: dict[str, type] = {t.__name__: t for t in types}
    by_name.update(aliases or {})
    expected = " or ".join(sorted({t.__name__ for t in types}))
    if not isinstance(data, Mapping):
        raise BadInputError(f"{expected} config must be a JSON object, got {type(data).__name__}")
    kind = data.get("_type", types[0].__name__ if len(types) == 1 else None)
    if kind is None:
        raise BadInputError(f"config has no _type; expected one of {expected}")
    target = by_name.get(str(kind))
    if target is None:
        raise BadInputError(f"config is a {kind}, expected {expected}")
    names = {f.name for f in dataclasses.fields(target)}
    payload = {k: v for k, v in data.items() if not k.startswith("_")}
    unknown = sorted(set(payload) - names)
    if unknown:
        raise BadInputError(f"unknown {target.__name__} field(s): {', '.join(unknown)}")
    _check_field_types(target, payload)
    payload = _nested_configs(target, payload)
    try:
        return target(**payload)  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"invalid {target.__name__}: {_flat(exc)}") from None


def _flat(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _check_field_types(cls: type, payload: Mapping[str, Any]) -> None:
    """Refuse JSON values whose type cannot be the field's (a string where a number goes)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: leave the check to the dataclass itself
        return
    for name, value in payload.items():
        hint = hints.get(name)
        if hint is not None and not _matches_hint(value, hint):
            raise BadInputError(
                f"{cls.__name__}.{name} must be {_hint_name(hint)}, got {type(value).__name__} {value!r}"
            )


def _matches_hint(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches_hint(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(_matches_hint(v, a) for v, a in zip(value, args))
        inner = args[0] if args else Any
        return all(_matches_hint(v, inner) for v in value)
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            return False
        vt = args[1] if len(args) == 2 else Any
        return all(_matches_hint(v, vt) for v in value.values())
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return isinstance(value, (Mapping, hint))
    return True  # anything else (custom classes, callables): the dataclass validates it


def _nested_configs(cls: type, payload: dict[str, Any]) -> dict[str, Any]:
    """Turn tagged dicts of dataclass-typed fields back into their dataclasses."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        return payload
    out = dict(payload)
    for name, value in payload.items():
        hint = hints.get(name)
        candidates = [a for a in (typing.get_args(hint) or (hint,)) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        if candidates and isinstance(value, Mapping):
            out[name] = config_from_dict(candidates, value)
    return out


def _hint_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def save_config(path: str | os.PathLike[str], cfg: Any) -> Path:
    """Write one dataclass config as tagged JSON (the only way packages serialise configs)."""
    return save_json(path, config_to_dict(cfg))


def load_config(path: str | os.PathLike[str], cls: type[T] | Sequence[type], aliases: Mapping[str, type] | None = None) -> T:
    """Read a config written by :func:`save_config`; errors name the file."""
    data = load_json(path)
    try:
        return config_from_dict(cls, data, aliases)
    except BadInputError as exc:
        raise BadInputError(f"{path}: {exc}") from None


def save_state_dict(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save tensors as safetensors atomically, with JSON metadata in the header."""
    from safetensors.torch import save_file

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {_META_KEY: json.dumps(_to_jsonable(dict(metadata or {})))}
    with atomic_path(path) as tmp:
        save_file(_untie(flat), str(tmp), metadata=header)
    return Path(path)


def _untie(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied embeddings); clone the repeats.
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        ptr = value.untyped_storage().data_ptr() if value.numel() else -1
        if ptr in seen and ptr != -1:
            value = value.clone()
        seen.add(ptr)
        out[key] = value
    return out


def load_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file and its slimkit metadata, with clear errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"file not found: {p}")
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as handle:
            raw_meta = handle.metadata() or {}
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptFileError(f"{p} is not a readable safetensors file ({exc})") from None
    meta: dict[str, Any] = {}
    if _META_KEY in raw_meta:
        try:
            meta = json.loads(raw_meta[_META_KEY])
        except json.JSONDecodeError:
            raise CorruptFileError(f"{p} has corrupt slimkit metadata") from None
    return tensors, meta



def state_digest(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over ``meta`` (without its ``sha256`` entry, canonical JSON) and every tensor's name,
    dtype, shape and bytes: what :func:`save_checked_state_dict` stores and its loader verifies."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\n{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checked_state_dict(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """:func:`save_state_dict` for files that must be verifiable later (the packed exports): ``meta``
    gains the sorted ``tensors`` list and a ``sha256`` (:func:`state_digest`) over exactly the JSON the
    header holds. A failed write is one BadInputError line. Returns the metadata written."""
    full: dict[str, Any] = json.loads(json.dumps({**meta, "tensors": sorted(tensors)}))
    full["sha256"] = state_digest(full, tensors)
    try:
        save_state_dict(path, tensors, full)
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return full


def short_list(names: set[str] | list[str]) -> str:
    """The first three of ``names`` in sorted order, and how many more: for one-line error messages."""
    ordered = sorted(names)
    return ", ".join(ordered[:3]) + (f" (+{len(ordered) - 3} more)" if len(ordered) > 3 else "")


def load_checked_state_dict(
    path: str | os.PathLike[str], fmt: str, max_version: int, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """``(tensors, meta, path)`` of a file :func:`save_checked_state_dict` wrote with ``meta["format"] == fmt``
    and ``meta["format_version"] <= max_version``; a missing file is a BadInputError, anything off (not
    ``what``, a newer version, a tensor missing or unlisted, a failed checksum) one CorruptFileError line."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"file not found: {p}")
    try:
        tensors, meta = load_state_dict(p)
    except CorruptFileError as exc:
        raise CorruptFileError(" ".join(str(exc).split())) from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CorruptFileError(f"{p} is not {what} (no {fmt!r} metadata)")
    fv = meta.get("format_version")
    if isinstance(fv, bool) or not isinstance(fv, int) or fv > max_version:
        raise CorruptFileError(f"{p} has export format version {fv!r}; this release reads up to {max_version}")
    names = meta.get("tensors")
    if not isinstance(names, list):
        raise CorruptFileError(f"{p} has corrupt export metadata (no tensor list)")
    missing = set(map(str, names)) - set(tensors)
    if missing:
        raise CorruptFileError(f"{p} is missing tensor(s) {short_list(missing)}")
    extra = set(tensors) - set(map(str, names))
    if extra:
        raise CorruptFileError(f"{p} holds tensor(s) its metadata does not list: {short_list(extra)}")
    if meta.get("sha256") != state_digest(meta, tensors):
        raise CorruptFileError(f"{p} fails its checksum (the file was changed or damaged after export)")
    return tensors, meta, p


def save_model(
    directory: str | os.PathLike[str],
    model: nn.Module,
    config: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg: Any = config_to_dict(config) if dataclasses.is_dataclass(config) else config
    meta = {"config": cfg, **dict(extra or {})}
    save_state_dict(out / "model.safetensors", model.state_dict(), meta)
    save_json(out / "config.json", meta)
    return out


def load_model_files(directory: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`save_model` wrote: ``(state_dict, config_json)``."""
    d = Path(directory)
    if not d.is_dir():
        raise BadInputError(f"model directory not found: {d}")
    tensors, _ = load_state_dict(d / "model.safetensors")
    config = load_json(d / "config.json")
    if not isinstance(config, dict):
        raise CorruptFileError(f"{d / 'config.json'} must hold a JSON object")
    return tensors, config


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """``load_state_dict`` with one readable error listing every mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    problems = []
    if shapes:
        problems.append("shape mismatch: " + ", ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
    if strict and missing:
        problems.append(f"missing {len(missing)} key(s): " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    if strict and unexpected:
        problems.append(
            f"unexpected {len(unexpected)} key(s): " + ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        )
    if problems:
        raise BadInputError("checkpoint does not fit the model: " + "; ".join(problems))
    model.load_state_dict(dict(state_dict), strict=strict)
