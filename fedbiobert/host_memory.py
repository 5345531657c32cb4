"""Host (CPU) memory that does not creep up with steps, at no throughput cost: glibc's dynamic mmap
threshold, and a thread that gives its heaps' free pages back to the system every
`--malloc_trim_seconds` (default 30; `malloc_trim`).

Why: glibc's malloc serves an allocation of at least M_MMAP_THRESHOLD bytes with its own mmap, given
back to the system when freed, and smaller ones from its heaps, which keep freed memory for reuse.
By default that threshold is dynamic: each freed mmapped block raises it (up to 32 MB on 64-bit), so
after a few steps activation-sized tensors (8 MB at hidden 512, length 256, batch 16; 25 MB at
BERT-base length 512) come from the main heap, whose free lists fragment as tensors of many sizes
come and go: freed holes stay resident while the heap extends past them, and resident memory creeps
up with steps and rounds although nothing is held. `malloc_trim(0)` returns every free page of the
heaps (the holes in the middle too, by madvise), so what stays resident is what is live plus what
one period fragmented, however long the run; the heaps still hand out reused memory between trims.

Measured (docs/at-scale.md): trimming every 5 s cost 1.4-2% at hidden 128 and 4.4% in a 2-process
fedbiobert run at hidden 512 (the trimmed pages are faulted back in, and the kernel zeroes them), so
the default trims every 30 s: within noise of glibc alone there, and it kept a 12-round run's peak at
1.3 GB where glibc alone rose to 1.9 GB and was still rising. The older fix, a fixed threshold
(`--mmap_threshold_mb 1`: glibc then stops adjusting it), gives every large tensor its own mapping: the
least memory, but a page fault per new page of every large tensor, 1.27x slower at hidden 512 and 1.7x
at hidden 128 on CPU. GPU activations live in the CUDA caching allocator and do not care. Non-glibc
systems (macOS, musl) are left as they are.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
GLIBC_MAX_MMAP_THRESHOLD = 32 * 2**20  # glibc refuses larger values on 64-bit systems
TRIM_THREAD_NAME = "malloc-trim"


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # glibc has both; macOS and musl do not
    except (OSError, AttributeError):
        return None
    return libc


def fix_mmap_threshold(megabytes: float) -> bool:
    """Serve allocations of at least `megabytes` MB with their own mmap from now on (0: leave glibc's
    dynamic threshold). True when it was set. Call it early, before the large allocations start."""
    if megabytes <= 0:
        return False
    threshold = int(min(megabytes * 2**20, GLIBC_MAX_MMAP_THRESHOLD))
    libc = _glibc()
    if libc is None:  # not glibc: nothing to set
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        logger.warning("could not fix malloc's mmap threshold at %d bytes; host memory may grow with steps",
                       threshold)
        return False
    return True


class HeapTrimmer(threading.Thread):
    """A daemon thread that calls glibc's `malloc_trim(0)` every `seconds` until `stop()`. ctypes lets go
    of the GIL for the call, and glibc locks each arena only while it trims it: a training thread waits
    only if it allocates from that arena at that moment."""

    def __init__(self, malloc_trim, seconds: float) -> None:
        super().__init__(name=TRIM_THREAD_NAME, daemon=True)
        self._malloc_trim, self._seconds, self._stopped = malloc_trim, seconds, threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._seconds):
            self._malloc_trim(0)

    def stop(self) -> None:
        self._stopped.set()


def trim_heap_every(seconds: float) -> HeapTrimmer | None:
    """Give glibc's free heap memory back to the system every `seconds` from now on, from a daemon
    thread (a run's ends with its process). The thread, or None when there is none (0, not glibc)."""
    if seconds <= 0:
        return None
    libc = _glibc()
    if libc is None:
        return None
    malloc_trim = libc.malloc_trim
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    trimmer = HeapTrimmer(malloc_trim, seconds)
    trimmer.start()
    return trimmer


def setup_host_memory(mmap_threshold_mb: float, malloc_trim_seconds: float) -> None:
    """What run.py does for every process, before the model and data are allocated."""
    fix_mmap_threshold(mmap_threshold_mb)
    trim_heap_every(malloc_trim_seconds)
