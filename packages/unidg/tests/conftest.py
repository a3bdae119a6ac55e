"""Shared fixtures: a short synthetic video and well-separated clustered embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from unidg.synth import SynthConfig, embedding_clusters, simulate


@pytest.fixture(scope="session")
def video() -> Any:
    """Two minutes, 5 characters + 2 extras: a few hundred tracks."""
    return simulate(SynthConfig(identities=5, extras=2, duration=120.0, dim=32), seed=3)


@pytest.fixture(scope="session")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """600 unit vectors in 12 tight, imbalanced clusters (same-cluster cosine ~0.9)."""
    return embedding_clusters(600, 12, dim=32, sigma=0.25, seed=1)
