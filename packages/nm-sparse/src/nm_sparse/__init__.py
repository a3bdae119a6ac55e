"""nm-sparse: N:M sparse training (SR-STE, SpRe, Bi-Mask) and deployment for PyTorch.

Typical use::

    report = nm_sparse.sparsify(model, nm_sparse.NMConfig(method="spre", pattern="2:4"))
    ... train, with nm_sparse.NMSparseCallback() (or nm_sparse.step(model) per step) ...
    nm_sparse.deploy(model)           # plain modules holding the N:M weights
    nm_sparse.check(model).all_valid  # True
"""

from nm_sparse.baselines import ASPLayer, FixedMaskLayer, TransposableLayer, UnstructuredLayer
from nm_sparse.bimask import BiMaskFunction, BiMaskLayer
from nm_sparse.callbacks import NMSparseCallback
from nm_sparse.check import CheckReport, LayerCheck, check, check_weight
from nm_sparse.config import METHODS, NMConfig
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
from nm_sparse.pattern import MAX_M, NMPattern, parse_pattern
from nm_sparse.semi_structured import SemiStructuredReport, to_semi_structured
from nm_sparse.sparsify import SparsifyReport, find_conv_bn_pairs, nm_layers, sparsify, step, unwrap
from nm_sparse.spre import SpReConv
from nm_sparse.srste import SRSTELayer

__version__ = "0.1.0"

__all__ = [
    "ASPLayer",
    "BiMaskFunction",
    "BiMaskLayer",
    "CheckReport",
    "DeployReport",
    "FixedMaskLayer",
    "LayerCheck",
    "MAX_M",
    "METHODS",
    "NMConfig",
    "NMLayer",
    "NMPattern",
    "NMSparseCallback",
    "SRSTEFunction",
    "SRSTELayer",
    "SemiStructuredReport",
    "SparsifyReport",
    "SpReConv",
    "TransposableLayer",
    "UnstructuredLayer",
    "backward_mask",
    "check",
    "check_weight",
    "deploy",
    "find_conv_bn_pairs",
    "fold_batchnorm",
    "from_gemm_matrix",
    "nm_layers",
    "nm_mask",
    "nm_mask_reference",
    "parse_pattern",
    "permutation_scores",
    "permutation_scores_reference",
    "sparsify",
    "spatial_mask_reference",
    "srste",
    "step",
    "to_gemm_matrix",
    "to_semi_structured",
    "transposable_mask_reference",
    "unstructured_mask",
    "unwrap",
    "weight_nm_mask",
]
