"""CPU runtime settings for fast inference and training (opt-in: they change the whole process).

`reduce_page_faults()`: a model's forward allocates tensors of tens of megabytes; glibc serves
those with fresh mmap'ed pages, which the kernel faults in and zeroes on first touch, and returns
them on free. On a 2-core machine that made element-wise ops about 3x slower and the paper model's
batch-64 forward about 40% slower (benchmarks/bench_models.py). Keeping freed memory in the
process avoids it, at the price of the process holding on to its peak memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters
_M_MMAP_MAX = -4


def reduce_page_faults(trim_threshold: int = 2**30) -> bool:
    """Make glibc keep freed memory (no mmap for large blocks, trim only above
    `trim_threshold` bytes free). Returns False where it does not apply (not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
