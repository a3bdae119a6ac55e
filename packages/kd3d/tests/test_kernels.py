"""The Triton kernels against their PyTorch references, run on CPU tensors under ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import pytest
import torch

from kd3d.kernels import roi_sample_triton, segment_mean_triton
from kd3d.reference import rotated_roi_sample_reference, segment_mean_reference
from slimkit.kernels import interpret_mode, triton_importable

pytestmark = [
    pytest.mark.interpret,
    pytest.mark.skipif(not (interpret_mode() and triton_importable()), reason="needs TRITON_INTERPRET=1 and triton"),
]


def test_segment_mean_kernel_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    segment = torch.sort(torch.randint(0, 12, (60,), generator=g)).values
    segment = torch.unique(segment, return_inverse=True)[1]  # every segment non-empty
    values = torch.randn(60, 5, generator=g)
    counts = torch.bincount(segment)
    starts = torch.zeros(len(counts) + 1, dtype=torch.int64)
    starts[1:] = torch.cumsum(counts, 0)
    got = segment_mean_triton(values, starts)
    torch.testing.assert_close(got, segment_mean_reference(values, segment, len(counts)), atol=1e-6, rtol=1e-6)


def test_roi_sample_kernel_matches_reference() -> None:
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 5, 7, 9, generator=g)
    rois = torch.tensor([[0, 3.2, 2.9, 4.0, 2.0, 0.3], [1, 8.5, 6.5, 3.0, 3.0, -2.0], [1, 0.2, 0.1, 1.5, 1.0, 1.1]])
    got = roi_sample_triton(feats, rois, 4)
    torch.testing.assert_close(got, rotated_roi_sample_reference(feats, rois, 4), atol=1e-5, rtol=1e-5)
