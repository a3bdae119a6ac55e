from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch

from slimkit.kernels import (
    autotune_configs,
    compile_ahead_of_time,
    interpret_mode,
    l2_normalize_rows_triton,
    lazy_kernel,
    ptxas_missing,
    use_triton,
)
from slimkit.reference import l2_normalize_rows_reference


def test_autotune_configs_cut_under_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert autotune_configs([1, 2, 3]) == [1]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert autotune_configs([1, 2, 3]) == [1, 2, 3]


def test_use_triton_off_for_cpu_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not use_triton(torch.zeros(2))
    assert not use_triton()


def test_lazy_kernel_builds_once_on_first_call() -> None:
    calls: list[int] = []

    def builder() -> object:
        calls.append(1)
        return object()

    get = lazy_kernel(builder)
    assert calls == []
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1]
    assert all(r is results[0] for r in results) and get() is results[0]
    assert get.__name__ == "builder"


def test_importing_kernels_does_not_import_triton() -> None:
    code = "import sys, slimkit.kernels, slimkit.ops; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 7, 33)])
def test_triton_matches_reference(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    if not interpret_mode():
        pytest.skip("run with TRITON_INTERPRET=1")
    torch.manual_seed(0)
    x = torch.randn(*shape).to(dtype)
    assert use_triton(x)
    out = l2_normalize_rows_triton(x)
    assert out.dtype == dtype and out.shape == x.shape
    tol = 1e-3 if dtype == torch.float16 else 1e-6
    torch.testing.assert_close(out, l2_normalize_rows_reference(x), rtol=tol, atol=tol)


def test_compile_ahead_of_time_runs_without_the_interpreter(tmp_path) -> None:
    script = "import os, sys; print(os.environ.get('TRITON_INTERPRET'), os.environ['TRITON_CACHE_DIR'], sys.argv[1])"
    proc = compile_ahead_of_time(script, 90, tmp_path)
    assert proc.returncode == 0 and proc.stdout.split() == ["None", str(tmp_path), "90"]
    assert not ptxas_missing(proc)
    missing = subprocess.CompletedProcess([], 1, "", "RuntimeError: ptxas not found in PATH")
    assert ptxas_missing(missing)
    assert not ptxas_missing(subprocess.CompletedProcess([], 1, "", "error: bad kernel"))
