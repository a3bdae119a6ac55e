"""The package's method registry: config type -> handler (``nm_sparse.api.REGISTRY``).

It lives below the method files so each of them (:mod:`nm_sparse.srste`, :mod:`nm_sparse.spre`,
:mod:`nm_sparse.bimask`, :mod:`nm_sparse.baselines`) can register its handler for its own
config; :mod:`nm_sparse.api` imports them all and re-exports ``REGISTRY``. Saved 0.1 configs
(``"_type": "NMConfig"``) load through the alias.
"""

from __future__ import annotations

from nm_sparse.config import NMConfig
from slimkit.registry import MethodRegistry

REGISTRY = MethodRegistry("nm-sparse")
REGISTRY.alias("NMConfig", NMConfig)
