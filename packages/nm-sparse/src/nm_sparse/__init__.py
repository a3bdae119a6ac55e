"""nm-sparse: N:M sparse training (SR-STE, SpRe, Bi-Mask) and deployment for PyTorch.

Typical use::

    model = nm_sparse.sparsify_(model, nm_sparse.SpReConfig(pattern="2:4"))   # in place, returns model
    ... train, with nm_sparse.NMSparseCallback() (or nm_sparse.step(model) per step) ...
    nm_sparse.deploy(model)           # plain modules holding the N:M weights
    nm_sparse.check(model).all_valid  # True
    # or, before deploying: nm_sparse.unsparsify(model) puts the original modules back

``__all__`` lists the contract (entry point, undo, configs) and the most-used functions; every
other 0.1 name is still an attribute of the package and importable from its submodule.
"""

from importlib.metadata import PackageNotFoundError, version

from nm_sparse.api import REGISTRY, sparsify, sparsify_, unsparsify
from nm_sparse.baselines import ASPLayer, FixedMaskLayer, TransposableLayer, UnstructuredLayer
from nm_sparse.bimask import BiMaskFunction, BiMaskLayer
from nm_sparse.callbacks import NMSparseCallback, add_decay_grads
from nm_sparse.check import CheckReport, LayerCheck, check, check_weight
from nm_sparse.config import (
    METHODS,
    ASPConfig,
    BiMaskConfig,
    DenseConfig,
    NMConfig,
    SparsityConfig,
    SpReConfig,
    SRSTEConfig,
    TransposableConfig,
    UnstructuredConfig,
)
from nm_sparse.deploy import DeployReport, deploy, fold_batchnorm
from nm_sparse.layers import NMLayer, SRSTEFunction, srste
from nm_sparse.masks import (
    backward_mask,
    from_gemm_matrix,
    nm_mask,
    nm_mask_reference,
    permutation_scores,
    permutation_scores_reference,
    spatial_mask_reference,
    to_gemm_matrix,
    transposable_mask_reference,
    unstructured_mask,
    weight_nm_mask,
)
from nm_sparse.ops import compress, decompress, nm_matmul
from nm_sparse.pattern import MAX_M, NMPattern, parse_pattern
from nm_sparse.semi_structured import SemiStructuredReport, to_semi_structured
from nm_sparse.sparsify import SparsifyReport, find_conv_bn_pairs, nm_layers, step, unwrap
from nm_sparse.spre import SpReConv
from nm_sparse.srste import SRSTELayer

try:
    __version__ = version("nm-sparse")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "ASPConfig",
    "BiMaskConfig",
    "DenseConfig",
    "NMConfig",
    "NMSparseCallback",
    "add_decay_grads",
    "SRSTEConfig",
    "SpReConfig",
    "TransposableConfig",
    "UnstructuredConfig",
    "__version__",
    "check",
    "deploy",
    "sparsify",
    "sparsify_",
    "unsparsify",
]

# 0.1 names kept as attributes of the package (importable, just not in __all__).
_COMPAT = (
    REGISTRY, ASPLayer, FixedMaskLayer, TransposableLayer, UnstructuredLayer, BiMaskFunction, BiMaskLayer,
    CheckReport, LayerCheck, check_weight, METHODS, SparsityConfig, DeployReport, fold_batchnorm, NMLayer,
    SRSTEFunction, srste, backward_mask, from_gemm_matrix, nm_mask, nm_mask_reference, permutation_scores,
    permutation_scores_reference, spatial_mask_reference, to_gemm_matrix, transposable_mask_reference,
    unstructured_mask, weight_nm_mask, compress, decompress, nm_matmul, MAX_M, NMPattern, parse_pattern,
    SemiStructuredReport, to_semi_structured, SparsifyReport, find_conv_bn_pairs, nm_layers, step, unwrap,
    SpReConv, SRSTELayer,
)  # fmt: skip
