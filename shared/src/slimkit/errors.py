"""Exception types shared by every slimkit package.

CLIs map :class:`BadInputError` to a one-line message and exit code 2, so library
code raises it for anything the *user* got wrong (shapes, patterns, files, configs)
and lets genuine bugs surface as ordinary exceptions.
"""

from __future__ import annotations


class SlimkitError(Exception):
    """Base class for all slimkit errors."""


class BadInputError(SlimkitError, ValueError):
    """The caller supplied something unusable: wrong shape, bad pattern, bad config."""


class CorruptFileError(BadInputError):
    """A file exists but cannot be parsed, or does not match what it should hold."""
