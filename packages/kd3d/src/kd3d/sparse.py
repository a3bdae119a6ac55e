"""spconv 2.x on CPU: the guarded backward fix, and a dense ``conv3d`` reference for sparse layers.

spconv's CPU wheel runs sparse convolutions forward on a CPU-only torch, but its backward (and a few
other paths) asks ``torch.cuda.current_stream()`` for a stream handle it never uses on CPU tensors, so
``loss.backward()`` fails with "Torch not compiled with CUDA enabled" (traveller59/spconv#366).
:func:`apply_cpu_backward_fix` replaces that helper, where spconv imported it, with one that returns the
null stream handle ``0`` when CUDA is unavailable, and defers to the original otherwise. It runs when
this module is imported, changes nothing when CUDA is available, and never patches twice.

A second guarded fix, :func:`apply_cpu_serial_fix`, runs spconv's CPU convolutions with one intra-op
thread: with two threads its CPU path now and then returns wrong sums (found by the dense-reference
tests of this package; exact with one thread).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import spconv
import spconv.pytorch as spconv_torch
import torch
from spconv.pytorch import cppcore
from spconv.pytorch import ops as spconv_ops
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "CPU_FIX_MODULES",
    "CPU_SERIAL_FUNCTIONS",
    "SparseConvTensor",
    "apply_cpu_backward_fix",
    "apply_cpu_serial_fix",
    "cpu_backward_fix_applied",
    "dense_reference",
    "spconv_torch",
]

SparseConvTensor = spconv_torch.SparseConvTensor
#: The spconv modules that bound ``get_current_stream`` by name at import (``from cppcore import ...``).
CPU_FIX_MODULES = ("spconv.pytorch.cppcore", "spconv.pytorch.ops", "spconv.pytorch.hash", "spconv.pytorch.utils")
_ORIGINAL: Any = cppcore.get_current_stream


def _stream_or_null() -> int:
    """The current CUDA stream handle, or ``0`` (the null stream, unused by the CPU kernels) without CUDA."""
    if torch.cuda.is_available():
        return int(_ORIGINAL())
    return 0


_stream_or_null.kd3d_fix = True  # type: ignore[attr-defined]


def cpu_backward_fix_applied() -> bool:
    """Whether spconv's ops module calls the fixed stream helper."""
    return bool(getattr(spconv_ops.get_current_stream, "kd3d_fix", False))


def apply_cpu_backward_fix() -> bool:
    """Patch spconv 2.x so sparse convolutions train on a CPU-only torch; ``True`` when patched (now or before).

    Guarded: only spconv 2.x, only when CUDA is unavailable, only modules whose ``get_current_stream`` is
    still spconv's own (a user's replacement is left alone).
    """
    if torch.cuda.is_available() or not str(getattr(spconv, "__version__", "2")).startswith("2"):
        return cpu_backward_fix_applied()
    for name in CPU_FIX_MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "get_current_stream", None) is _ORIGINAL:
            module.get_current_stream = _stream_or_null  # type: ignore[attr-defined]
    return cpu_backward_fix_applied()


#: spconv's CPU gather-matmul-scatter gives wrong sums now and then when torch runs more than one
#: intra-op thread (measured here: 8 of 100 SubM convs off by up to 1e-3 with 2 threads, none with 1),
#: so these run single-threaded on CPU tensors.
CPU_SERIAL_FUNCTIONS = ("indice_conv", "indice_conv_backward", "get_indice_pairs")


def _single_threaded(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        threads = torch.get_num_threads()
        if first is None or first.is_cuda or threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    wrapper.kd3d_serial = True  # type: ignore[attr-defined]
    return wrapper


def apply_cpu_serial_fix() -> bool:
    """Run spconv's CPU convolutions and rule generation with one intra-op thread (see ``CPU_SERIAL_FUNCTIONS``);
    CUDA tensors are untouched. ``True`` when every function is wrapped (now or before)."""
    for name in CPU_SERIAL_FUNCTIONS:
        fn = getattr(spconv_ops, name, None)
        if fn is not None and not getattr(fn, "kd3d_serial", False):
            setattr(spconv_ops, name, _single_threaded(fn))
    return all(getattr(getattr(spconv_ops, n, None), "kd3d_serial", False) for n in CPU_SERIAL_FUNCTIONS)


apply_cpu_backward_fix()
apply_cpu_serial_fix()


def _dense_weight(layer: Any) -> Tensor:
    """spconv's ``[C_out, kz, ky, kx, C_in]`` (KRSC) weight as ``conv3d``'s ``[C_out, C_in, kz, ky, kx]``."""
    return layer.weight.permute(0, 4, 1, 2, 3)


def dense_reference(layer: Any, x: Any) -> Tensor:
    """What the sparse conv ``layer`` computes on ``x``, as a dense ``[B, C_out, D, H, W]`` tensor by ``conv3d``.

    A strided ``SparseConv3d`` equals ``conv3d`` on the densified input (inactive sites hold zeros, bias
    only at active outputs); a ``SubMConv3d`` is ``conv3d`` with stride 1 read only at the input's sites.
    """
    dense_in = x.dense()
    out = F.conv3d(dense_in, _dense_weight(layer), None, layer.stride, layer.padding, layer.dilation)
    if layer.subm:
        active = torch.zeros(x.batch_size, 1, *x.spatial_shape, dtype=out.dtype, device=out.device)
        idx = x.indices.long()
        active[idx[:, 0], 0, idx[:, 1], idx[:, 2], idx[:, 3]] = 1
    else:
        ones = torch.ones(1, 1, *layer.kernel_size, dtype=out.dtype, device=out.device)
        occupied = torch.zeros(x.batch_size, 1, *x.spatial_shape, dtype=out.dtype, device=out.device)
        idx = x.indices.long()
        occupied[idx[:, 0], 0, idx[:, 1], idx[:, 2], idx[:, 3]] = 1
        active = (F.conv3d(occupied, ones, None, layer.stride, layer.padding, layer.dilation) > 0).to(out.dtype)
    out = out * active
    if layer.bias is not None:
        out = out + layer.bias.view(1, -1, 1, 1, 1) * active
    return out
