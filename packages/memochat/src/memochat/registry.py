"""The package's method registry: config type -> handler (see ``slimkit.registry``)."""

from __future__ import annotations

from slimkit.registry import MethodRegistry

REGISTRY = MethodRegistry("memochat")
