"""Cached kernels are stamped by every kernel source: an edit to one file recompiles the kernels of the others."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import pytest

from gemkr_lab.kb import _fm_kernels, _kernel_cache, _sais_kernels, _select_kernels

PACKAGE = Path(__file__).resolve().parents[2] / "gemkr_lab"


def test_every_kernel_is_stamped_by_all_kernel_sources():
    stamp = _kernel_cache.sources_stamp()
    for module in (_fm_kernels, _sais_kernels, _select_kernels):
        kernels = [v for v in vars(module).values() if isinstance(v, numba.core.registry.CPUDispatcher)]
        assert kernels
        for kernel in kernels:
            locator = kernel._cache._impl.locator
            assert isinstance(locator, _kernel_cache.KernelInTreeLocator | _kernel_cache.KernelUserDirLocator)
            assert locator.get_source_stamp() == stamp


_RUN_A_KERNEL = textwrap.dedent(
    """
    import sys
    import numpy as np
    from gemkr_lab.kb import _sais_kernels as k
    assert k.__file__.startswith(sys.argv[1]), k.__file__  # the copy, not the checkout
    k.counts(np.array([1, 2, 2, 0], dtype=np.int32), np.zeros(3, dtype=np.int64))
    print(k.counts.stats.cache_hits and 'hit' or 'miss')
    """
)


@pytest.mark.slow  # fresh interpreters compiling kernels
def test_editing_another_kernel_file_recompiles_a_cached_kernel(tmp_path):
    """A copy of the package: run a kernel (compiled, cached), again (cached), then edit `_select_kernels.py`."""
    copy = tmp_path / "gemkr_lab"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), NUMBA_CACHE_DIR="")
    env.pop("NUMBA_CACHE_DIR")

    def run() -> str:
        done = subprocess.run(
            [sys.executable, "-c", _RUN_A_KERNEL, str(copy)], env=env, capture_output=True, text=True, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    assert run() == "miss"  # compiled and cached
    assert run() == "hit"  # the cache serves it
    with open(copy / "kb" / "_select_kernels.py", "a", encoding="utf-8") as f:
        f.write("\n# an edit in another kernel file\n")
    assert run() == "miss"  # numba's own stamp (this file's time and size) would have served the stale kernel
    assert run() == "hit"
