"""The package's method registry: config type -> handler (``qdetr.api.REGISTRY``).

It sits below the method file so :mod:`qdetr.quantize` registers its handler and
:mod:`qdetr.api` imports it.
"""

from __future__ import annotations

from slimkit.registry import MethodRegistry

REGISTRY = MethodRegistry("qdetr")
