"""Give the process's freed heap back to the operating system.

A burst of large, short-lived buffers (tenseal's key set-up: the key holder's reply holds a sealed secret context
for every owner, ~190 KB each, 190 MB at 1,000 owners) leaves glibc's heap holding the freed pages; the process
keeps them as resident memory for the rest of the run. ``malloc_trim(0)`` returns them (glibc only; elsewhere
nothing happens). It changes no result, only the resident size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def return_freed_memory() -> bool:
    """Collect garbage, then hand freed heap pages back to the OS; False where the C library cannot."""
    gc.collect()
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0) in (0, 1))
