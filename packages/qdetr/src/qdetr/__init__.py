"""qdetr: low-bit DETR with Q-DETR's distribution rectification distillation (arXiv 2304.00253).

Typical use::

    model = qdetr.quantize(detr, qdetr.QDetrConfig(w_bits=4, a_bits=4, attn_bits=8))  # in place
    qdetr.calibrate(model, [pixel_values])            # the quantizers' steps from one batch
    ... train with qdetr.training.qdetr_loss(teacher, qdetr.DRDConfig()) through slimkit.train ...
    qdetr.dequantize(model)                           # the original modules back, exactly

``detr`` is a Hugging Face ``DetrForObjectDetection`` (``qdetr.models.tiny_detr`` builds a small
one offline; ``qdetr.models.load_detr`` loads your local ``save_pretrained`` folder).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from slimkit.lazy import lazy_exports

if TYPE_CHECKING:  # the names below, for type checkers; at run time they load on first use
    from qdetr.api import dequantize, quantize, quantize_report
    from qdetr.config import DRDConfig, QDetrConfig
    from qdetr.quantize import calibrate

try:
    __version__ = version("qdetr")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["DRDConfig", "QDetrConfig", "__version__", "calibrate", "dequantize", "quantize", "quantize_report"]

# Where each public name lives. They load on first access (PEP 562), because transformers' DETR
# imports torch._dynamo and with it Triton: `import qdetr` (the CLI's --version, the configs)
# stays light, and Triton loads only once a model is touched.
_LAZY = {
    "DRDConfig": "qdetr.config", "QDetrConfig": "qdetr.config", "calibrate": "qdetr.quantize",
    "dequantize": "qdetr.api", "quantize": "qdetr.api", "quantize_report": "qdetr.api",
}  # fmt: skip


__getattr__ = lazy_exports("qdetr", _LAZY, globals())
