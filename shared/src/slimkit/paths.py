"""The one rule every slimkit CLI follows for its inputs and ``-o/--output`` paths.

Check first, write second: the ``check_*`` functions only look (nothing is created, not
even a parent folder), so a CLI validates every path before it writes its first file, and
a mistake ends in one :class:`~slimkit.errors.BadInputError` line naming the user's path.

**The overwrite rule** (the same for every CLI):

* an existing output *file* is replaced atomically (through :func:`slimkit.io.atomic_path`),
  and keeps its mode; a new one gets ``0o666 & ~umask``;
* an existing output *folder* is reused only when its :data:`OUTPUT_MARKER` names the same
  kind of output (a re-run or a resume); a folder of another kind, a non-empty folder that
  no slimkit command wrote, and a file where a folder is expected (or the reverse) are
  refused;
* parent folders are created when the output is written, never by a check.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from slimkit.errors import BadInputError
from slimkit.io import current_umask, save_json

__all__ = [
    "OUTPUT_MARKER",
    "check_input_dir",
    "check_input_file",
    "check_output_dir",
    "check_output_file",
    "claim_output_dir",
]

OUTPUT_MARKER = ".slimkit-output.json"
"""File that :func:`claim_output_dir` writes into an output folder: ``{"kind": kind}``."""


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return False


def _exists(p: Path) -> bool:
    try:
        return p.exists() or p.is_symlink()
    except OSError:
        return False


def _nearest_existing(p: Path) -> Path:
    """``p`` itself or its closest ancestor that exists (``.`` for a relative path)."""
    for candidate in (p, *p.parents):
        if _exists(candidate):
            return candidate
    return Path(".")


def _writable(folder: Path) -> bool:
    # os.access also answers EROFS for root on a read-only file system.
    return os.access(folder, os.W_OK | os.X_OK)


def _check_parent_chain(path: str | os.PathLike[str], p: Path) -> None:
    """For a path that does not exist yet: its nearest existing ancestor is a writable folder."""
    anchor = _nearest_existing(p.parent if p.parent != p else p)
    if not _is_dir(anchor):
        raise BadInputError(f"cannot write to {os.fspath(path)}: {anchor} is a file, not a folder")
    if not _writable(anchor):
        raise BadInputError(f"cannot write to {os.fspath(path)}: permission denied")


def _marker_kind(folder: Path) -> str | None:
    """The kind recorded in ``folder``'s marker; ``None`` without a marker, ``"unknown"`` if unreadable."""
    marker = folder / OUTPUT_MARKER
    if not _exists(marker):
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        kind = data.get("kind") if isinstance(data, dict) else None
    except (OSError, ValueError):
        return "unknown"
    return kind if isinstance(kind, str) and kind else "unknown"


def check_output_dir(path: str | os.PathLike[str], kind: str) -> Path:
    """Validate an output folder for a ``kind`` output without writing anything.

    Accepted: a path that does not exist yet under a writable folder, an empty writable
    folder, and a folder whose :data:`OUTPUT_MARKER` names ``kind`` (re-run, resume).
    Refused with a one-line :class:`BadInputError`: an existing file, a folder of another
    kind, a non-empty folder without a marker, a parent that is a file, no write permission.
    """
    shown = os.fspath(path)
    p = Path(path)
    if _exists(p) and not _is_dir(p):
        raise BadInputError(f"{shown} is a file, expected a folder")
    if not _exists(p):
        _check_parent_chain(path, p)
        return p
    other = _marker_kind(p)
    if other is not None and other != kind:
        raise BadInputError(f"{shown} holds a {other} output, not a {kind} output; choose another folder")
    if other is None:
        try:
            non_empty = any(p.iterdir())
        except PermissionError:
            raise BadInputError(f"cannot write to {shown}: permission denied") from None
        if non_empty:
            raise BadInputError(f"{shown} is not empty and was not written by {kind}; choose a new or empty folder")
    if not _writable(p):
        raise BadInputError(f"cannot write to {shown}: permission denied")
    return p


def claim_output_dir(path: str | os.PathLike[str], kind: str) -> Path:
    """:func:`check_output_dir`, then create the folder and mark it as a ``kind`` output.

    Reusing a folder already marked with the same ``kind`` is allowed and leaves the marker
    as it is.
    """
    p = check_output_dir(path, kind)
    if _marker_kind(p) == kind:
        return p

    # The folder appears with its marker already inside (a marked staging folder renamed over a
    # missing or empty one), so another process never sees it non-empty and unmarked: under
    # `accelerate launch` the other ranks check the folder while rank 0 claims it.
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{p.name}.claim-", dir=p.parent))
        try:
            os.chmod(staging, 0o777 & ~current_umask())
            save_json(staging / OUTPUT_MARKER, {"kind": kind})
            try:
                os.replace(staging, p)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                if _marker_kind(p) != kind:  # something else filled the folder meanwhile
                    check_output_dir(p, kind)
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except PermissionError:
        raise BadInputError(f"cannot write to {os.fspath(path)}: permission denied") from None
    except (FileExistsError, NotADirectoryError):
        raise BadInputError(f"cannot write to {os.fspath(path)}: a file is in the way") from None
    return p


def _suffix_ok(p: Path, suffixes: Sequence[str]) -> bool:
    name = p.name.lower()
    return any(name.endswith(s.lower()) and len(name) > len(s) for s in suffixes)


def check_output_file(path: str | os.PathLike[str], suffixes: Sequence[str]) -> Path:
    """Validate a single-file output without writing anything (not even its parent folder).

    The file's extension (case-insensitive) must be one of ``suffixes``, the format the
    command writes for it. An existing file is allowed: it is replaced atomically and keeps
    its mode (see the module's overwrite rule). Refused: an existing folder, another
    extension, a parent that is a file, a place without write permission.
    """
    shown = os.fspath(path)
    p = Path(path)
    if _is_dir(p):
        raise BadInputError(f"{shown} is a folder, expected a file")
    if not _suffix_ok(p, suffixes):
        raise BadInputError(f"cannot write {shown}: use one of {', '.join(suffixes)}")
    _check_parent_chain(path, p)
    return p


def check_input_file(path: str | os.PathLike[str], what: str, suffixes: Sequence[str] | None = None) -> Path:
    """An existing, non-empty, readable file (with one of ``suffixes``, when given)."""
    shown = os.fspath(path)
    p = Path(path)
    if not _exists(p) or (p.is_symlink() and not p.exists()):
        raise BadInputError(f"{what} not found: {shown}")
    if _is_dir(p):
        raise BadInputError(f"{what} {shown} is a folder, expected a file")
    if suffixes is not None and not _suffix_ok(p, suffixes):
        raise BadInputError(f"{what} {shown} is not one of {', '.join(suffixes)}")
    if not os.access(p, os.R_OK):
        raise BadInputError(f"cannot read {what} {shown}: permission denied")
    if p.stat().st_size == 0:
        raise BadInputError(f"{what} {shown} is empty")
    return p


def check_input_dir(path: str | os.PathLike[str], what: str) -> Path:
    """An existing, readable, non-empty folder."""
    shown = os.fspath(path)
    p = Path(path)
    if not _exists(p) or (p.is_symlink() and not p.exists()):
        raise BadInputError(f"{what} not found: {shown}")
    if not _is_dir(p):
        raise BadInputError(f"{what} {shown} is a file, expected a folder")
    try:
        empty = not any(p.iterdir())
    except PermissionError:
        raise BadInputError(f"cannot read {what} {shown}: permission denied") from None
    if empty:
        raise BadInputError(f"{what} {shown} is empty")
    return p
