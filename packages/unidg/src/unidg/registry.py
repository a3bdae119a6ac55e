"""The package's method registry: config type -> handler (``unidg.api.REGISTRY``).

It sits below :mod:`unidg.head` so the handler registers there and :mod:`unidg.api` imports it.
"""

from __future__ import annotations

from slimkit.registry import MethodRegistry

REGISTRY = MethodRegistry("unidg")
