"""numba's on-disk kernel cache, keyed by the source of every kernel module together.

numba stamps a cached kernel with its own source file's time and size only. Our kernels call and inline each
other across files (`_fm_kernels` and `_sa_kernels` use `_select_kernels`, the walks use `_prefetch`), so an
edit to `_select_kernels.py` left the others' cached machine code in place, stale, until someone deleted the
caches by hand. Here the kernels of `gemkr_lab.kb` (and `gemkr_lab.decoding._groups`) are stamped with one hash
of all those sources instead: an edit to any of them recompiles every kernel on its next use.

Imported by each kernel module before its first `@njit(cache=True)`: it puts its locators first in numba's list
(they take only functions of the files in `KERNEL_SOURCES`; numba's own handle everything else).
"""

import functools
import hashlib
from pathlib import Path

from numba.core import caching, config

_KB = Path(__file__).resolve().parent
KERNEL_SOURCES = (
    _KB / "_fm_kernels.py",
    _KB / "_sa_kernels.py",
    _KB / "_sais_kernels.py",
    _KB / "_select_kernels.py",
    _KB / "_prefetch.py",
    _KB.parent / "decoding" / "_groups.py",
)
"""The files whose kernels share one stamp: every numba kernel of the package and what they inline."""


def sources_stamp(paths=KERNEL_SOURCES) -> str:
    """One hash of the kernel sources' contents (not their times: a checkout or a copy keeps valid caches)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        h.update(Path(path).read_bytes())
    return h.hexdigest()


@functools.cache
def _stamp() -> str:
    return sources_stamp()


class _KernelStamp:
    """Locator mixin: only for our kernel files, stamped by all kernel sources together."""

    def get_source_stamp(self):
        """What a cached kernel's index must match: the hash of every kernel source."""
        return _stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        """This locator for functions of the kernel files, None (numba's own locators) for anything else."""
        if Path(py_file).resolve() not in KERNEL_SOURCES:
            return None
        return super().from_function(py_func, py_file)


class KernelInTreeLocator(_KernelStamp, caching.InTreeCacheLocator):
    """numba's default place (`__pycache__` beside the source), with the shared stamp."""

    @classmethod
    def from_function(cls, py_func, py_file):
        """Unless NUMBA_CACHE_DIR is set (then `KernelUserDirLocator`)."""
        return None if config.CACHE_DIR else super().from_function(py_func, py_file)


class KernelUserDirLocator(_KernelStamp, caching.UserProvidedCacheLocator):
    """NUMBA_CACHE_DIR, with the shared stamp."""


for _locator in (KernelUserDirLocator, KernelInTreeLocator)[::-1]:
    if _locator not in caching.CacheImpl._locator_classes:
        caching.CacheImpl._locator_classes.insert(0, _locator)
