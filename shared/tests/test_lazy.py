"""slimkit.lazy: names load on first access, are cached, and unknown names fail like a module's."""

from __future__ import annotations

import sys
import types

import pytest

from slimkit.errors import BadInputError
from slimkit.lazy import lazy_exports


def test_name_loads_on_first_access_and_is_cached() -> None:
    namespace: dict = {}
    getattr_ = lazy_exports("demo_pkg", {"BadInputError": "slimkit.errors"}, namespace)
    assert getattr_("BadInputError") is BadInputError
    assert namespace == {"BadInputError": BadInputError}


def test_module_is_imported_only_when_its_name_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("slimkit_lazy_probe")
    module.VALUE = 7  # type: ignore[attr-defined]
    getattr_ = lazy_exports("demo_pkg", {"VALUE": "slimkit_lazy_probe"}, {})
    monkeypatch.delitem(sys.modules, "slimkit_lazy_probe", raising=False)
    with pytest.raises(ModuleNotFoundError):
        getattr_("VALUE")  # not importable yet: proves the import happens at access time
    monkeypatch.setitem(sys.modules, "slimkit_lazy_probe", module)
    assert getattr_("VALUE") == 7


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'demo_pkg' has no attribute 'nope'"):
        lazy_exports("demo_pkg", {}, {})("nope")
