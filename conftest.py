"""Repository-wide pytest hooks: auto-skip GPU tests without CUDA, make slow tests opt-in, and keep
generated data sets in one cache per test session (never the user's ``~/.cache``)."""

from __future__ import annotations

import os

import pytest
import torch

# Every way of running the tests checks the Triton kernels: without a GPU they run under Triton's
# CPU interpreter (kernels are built lazily, so setting it here, before collection, is in time).
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _session_data_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One cache folder for ``slimkit.datasets`` per session: a set any test builds is built once."""
    os.environ["SLIMKIT_CACHE"] = str(tmp_path_factory.mktemp("slimkit-cache"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = torch.cuda.is_available()
    run_slow = config.getoption("--run-slow")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: pass --run-slow"))
