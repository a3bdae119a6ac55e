"""The package's method registry: config type -> handler (``unidg.api.REGISTRY``).

A module of its own, below :mod:`unidg.api` (where the :class:`~unidg.config.ClusterConfig` handler
registers), so the registry can be imported without the network and the clustering code.
"""

from __future__ import annotations

from slimkit.registry import MethodRegistry

REGISTRY = MethodRegistry("unidg")
