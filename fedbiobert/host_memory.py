"""Host (CPU) memory that does not grow with the steps of a round: a fixed glibc mmap threshold.

Why: glibc's malloc serves an allocation of at least M_MMAP_THRESHOLD bytes with its own mmap, given
back to the system when freed, and smaller ones from its heaps, which keep freed memory for reuse.
By default that threshold is dynamic: each freed mmapped block raises it (up to 32 MB on 64-bit), so
after a few steps every activation-sized tensor of a training step (8 MB at hidden 512, length 256,
batch 16; 25 MB at BERT-base length 512) comes from the heaps, whose free lists fragment as tensors
of many sizes come and go. Measured with `python -m fedbiobert.bench.memory` (hidden 512, length
256, batch 16): a fedbiobert client's peak resident memory grew 17% from 5 to 20 steps with the
dynamic threshold, 3% with a fixed 1 MB one, while what the engine itself holds stayed the same.

Setting M_MMAP_THRESHOLD through mallopt fixes it (glibc then stops adjusting it): large tensors get
their own mapping and go back to the system when freed. The cost is a page fault per new page of a
large tensor (the kernel zeroes it). That is not small on CPU: measured on a quiet machine, a
hidden-128 model trained 1.50x faster with the dynamic threshold (`--mmap_threshold_mb 0`), a
hidden-512 one 1.16-1.30x (docs/at-scale.md). The default keeps
long runs flat; short CPU runs may trade that for speed. GPU activations live in the CUDA caching
allocator and do not care. Non-glibc systems (macOS, musl) are left as they are.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
GLIBC_MAX_MMAP_THRESHOLD = 32 * 2**20  # glibc refuses larger values on 64-bit systems


def fix_mmap_threshold(megabytes: float) -> bool:
    """Serve allocations of at least `megabytes` MB with their own mmap from now on (0: leave glibc's
    dynamic threshold). True when it was set. Call it early, before the large allocations start."""
    if megabytes <= 0:
        return False
    threshold = int(min(megabytes * 2**20, GLIBC_MAX_MMAP_THRESHOLD))
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to set
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        logger.warning("could not fix malloc's mmap threshold at %d bytes; host memory may grow with steps",
                       threshold)
        return False
    return True
