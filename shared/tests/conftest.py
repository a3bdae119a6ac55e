"""Fixtures shared by slimkit's tests."""

from __future__ import annotations

import locale
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture
def c_locale() -> Iterator[None]:
    """The C locale (ASCII): files slimkit wrote in UTF-8 (JSON, run markers) must still read back."""
    if sys.flags.utf8_mode:
        pytest.skip("Python's UTF-8 mode ignores the locale")
    old = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C")
        if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
            pytest.skip("this platform's C locale is UTF-8")
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, old)
