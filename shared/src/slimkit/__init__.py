"""slimkit: shared utilities for the slimkit model-compression microlibraries.

Submodules are imported lazily by the packages that need them so that
``import slimkit`` stays cheap: ``slimkit.train``, ``slimkit.bench``,
``slimkit.data``, ``slimkit.kernels``, ``slimkit.cli``, ``slimkit.io``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from slimkit.errors import BadInputError, CorruptFileError, SlimkitError

try:
    __version__ = version("slimkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["BadInputError", "CorruptFileError", "SlimkitError", "__version__"]
