import numpy as np
import psutil
import pytest

from fedveil.core.memory import _libc, return_freed_memory

MB = 2**20


@pytest.mark.skipif(_libc() is None, reason="needs glibc's malloc_trim")
def test_freed_buffers_of_a_burst_go_back_to_the_os():
    # tenseal's key set-up in small: many ~190 KB buffers (one sealed context per owner) on the heap (glibc puts
    # them there once a freed one of that size raised its mmap threshold), then freed while the last stays:
    # the heap keeps their pages until trimmed
    warm = np.ones(190_000 // 8)
    del warm
    burst = [np.ones(190_000 // 8) for _ in range(800)]  # ~150 MB
    last = burst[-1]
    del burst
    before = psutil.Process().memory_info().rss
    assert return_freed_memory()
    freed = before - psutil.Process().memory_info().rss
    assert freed > 100 * MB, f"{freed / MB:.0f} MB returned"
    assert last.sum() == last.size
