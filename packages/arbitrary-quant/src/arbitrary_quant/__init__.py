"""arbitrary-quant: MultiQuant any-bit QAT, DFSQ super-resolution PTQ and Bi-ViT binarization.

Typical use::

    model = arbitrary_quant.multiquant(model, arbitrary_quant.MultiQuantConfig(bit_list=(2, 4, 6, 8)))
    ... train (arbitrary_quant.training: every bit-width on every batch) ...
    arbitrary_quant.set_bits(model, 4)   # run as a W4A4-cost network
    arbitrary_quant.dequantize(model)    # the original modules are back

    arbitrary_quant.dfsq(sr_model, calibration_batches, arbitrary_quant.DFSQConfig(bits=4))  # PTQ
    arbitrary_quant.binarize_vit(vit, arbitrary_quant.BiViTConfig())                         # then train
"""

from importlib.metadata import PackageNotFoundError, version

from arbitrary_quant.api import dequantize, quantize_
from arbitrary_quant.baselines import any_precision, lsq_quantize
from arbitrary_quant.bivit import binarize_vit
from arbitrary_quant.config import AnyPrecisionConfig, BiViTConfig, DFSQConfig, LSQConfig, MultiQuantConfig
from arbitrary_quant.dfsq import dfsq
from arbitrary_quant.multiquant import multiquant, set_bits

try:
    __version__ = version("arbitrary-quant")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "AnyPrecisionConfig",
    "BiViTConfig",
    "DFSQConfig",
    "LSQConfig",
    "MultiQuantConfig",
    "__version__",
    "any_precision",
    "binarize_vit",
    "dequantize",
    "dfsq",
    "lsq_quantize",
    "multiquant",
    "quantize_",
    "set_bits",
]
