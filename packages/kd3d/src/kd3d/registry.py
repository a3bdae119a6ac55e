"""The package's method registry: distillation config type -> the handler that prepares a student.

It sits below :mod:`kd3d.distillation` (which registers the handlers) and :mod:`kd3d.api` (which exports it).
"""

from __future__ import annotations

from slimkit.registry import MethodRegistry

REGISTRY = MethodRegistry("kd3d")
