"""The package's method registry: config type -> handler (``arbitrary_quant.api.REGISTRY``).

It lives below the method files so each of them (:mod:`arbitrary_quant.multiquant`,
:mod:`arbitrary_quant.baselines`, :mod:`arbitrary_quant.dfsq`, :mod:`arbitrary_quant.bivit`)
registers the handler for its own config; :mod:`arbitrary_quant.api` imports them all.
"""

from __future__ import annotations

from slimkit.registry import MethodRegistry

REGISTRY = MethodRegistry("arbitrary-quant")
