"""Keep freed tensor memory in the process instead of returning it to the kernel (glibc only).

Why. A training step allocates and frees many tensors of 0.1-20 MB (bit-sliced comparison
material, products, the dealer's corrections). glibc's malloc serves a block above its
*mmap threshold* with a fresh ``mmap`` and gives it back with ``munmap`` when freed, and
shrinks the heap top whenever more than its *trim threshold* lies free there. Both thresholds
start at 128 KB and adapt (upwards, to the size of a freed mmap-ed block) only now and then, so
the next step's tensors keep landing on new pages: every 4 KB page costs a page fault and the
kernel zeroes it. Measured on a 2-party digits MLP run (``perf stat`` / ``perf record`` on
party 0, steady epochs, 2-core VM): 12,098 page faults in 0.8 s and ~14 % of the party's CPU
in the kernel's page zeroing and fault handling; with the thresholds below, 162 faults in the
same window. MLP epochs 13 % shorter (5 alternating pairs of runs of ``bench/neural_bench.py``),
2-party softmax 10-18 % (2 pairs, medians of 3); logistic regression unchanged (small tensors).

What. :func:`tune_allocator` sets, through ``mallopt``: blocks below 32 MB (the largest mmap
threshold glibc accepts on 64-bit) come from the heap, and the heap top is trimmed only when
more than 128 MB lie free there. Fixing the thresholds also turns off glibc's dynamic
adjustment. Freed memory is reused, not added to: the 10^7-row out-of-core runs, measured with
it, peak at 0.75-0.98 GB per process (``bench/results/out_of_core.txt``, bound 1.5 GB); a
process may keep up to 128 MB it no longer uses until it exits.

Not glibc (musl, macOS), or ``mallopt`` missing: nothing is changed and the function says so.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_allocator"]

M_TRIM_THRESHOLD = -1  # <malloc.h> parameter numbers
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's HEAP_MAX_SIZE / 2 on 64-bit: larger values are refused
TRIM_THRESHOLD = 128 << 20


def tune_allocator() -> bool:
    """Set the thresholds (see the module doc); True if glibc accepted both."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The process's own symbols (libc among them): no library search, which would spawn
        # ``ldconfig`` (a process must not start anything before its input is checked).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 for a parameter or value it refuses.
    ok_mmap = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok_trim = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return ok_mmap and ok_trim
