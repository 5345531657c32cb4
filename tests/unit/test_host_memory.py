"""Host memory that does not creep up with steps (host_memory.py): a thread that trims glibc's heaps,
and the older fixed mmap threshold, which keeps activation-sized tensors out of them.

Each probe runs in a fresh interpreter: glibc's threshold and heaps are process state. The threshold
probe frees a 16 MB tensor (which raises glibc's dynamic threshold to 16 MB), then allocates an 8 MB
one and reports the bytes glibc holds in mmapped blocks (mallinfo2's hblkhd) while it is alive. The
trim probe leaves 50 MB of holes between live heap blocks and reports what a second of the trim
thread gave back to the system."""
import ctypes
import ctypes.util
import subprocess
import sys

import pytest

from fedbiobert.config import ConfigError, parse_config, validate_static
from fedbiobert.host_memory import TRIM_THREAD_NAME, trim_heap_every

PROBE = """
import ctypes, ctypes.util, sys
import torch
from fedbiobert.host_memory import fix_mmap_threshold
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
fixed = fix_mmap_threshold(float(sys.argv[1]))
big = torch.ones(4 * 2**20)  # 16 MB
del big
before = libc.mallinfo2().hblkhd
activation = torch.ones(2 * 2**20)  # 8 MB
print(fixed, libc.mallinfo2().hblkhd - before)
"""


def _probe(script: str, value: float) -> tuple[str, int]:
    """Run a probe in a fresh process (malloc settings are per process); its two printed words."""
    result = subprocess.run([sys.executable, "-c", script, str(value)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    flag, number = result.stdout.split()
    return flag, int(number)


def _mmapped_bytes_of_an_8mb_tensor(threshold_mb: float) -> tuple[str, int]:
    return _probe(PROBE, threshold_mb)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2"),
                    reason="needs glibc >= 2.33 (mallinfo2)")
def test_after_a_large_free_an_activation_still_gets_its_own_mapping_only_with_the_fixed_threshold():
    assert _mmapped_bytes_of_an_8mb_tensor(1.0) == ("True", pytest.approx(8 * 2**20, rel=0.01))
    fixed, mmapped = _mmapped_bytes_of_an_8mb_tensor(0)  # glibc's dynamic threshold: from the heap
    assert fixed == "False" and mmapped < 2**20


TRIM_PROBE = """
import ctypes, ctypes.util, os, sys, time
from fedbiobert.host_memory import trim_heap_every
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
blocks = [libc.malloc(64 * 1024) for _ in range(1600)]  # 100 MB under glibc's 128 KB threshold: the heap
for block in blocks:
    ctypes.memset(block, 1, 64 * 1024)
for block in blocks[:-1:2]:  # every other block: 50 MB of holes between live blocks, kept by glibc
    libc.free(block)
before = resident()
trimmer = trim_heap_every(float(sys.argv[1]))
time.sleep(1.0)
print(trimmer is not None, round((before - resident()) / 2**20))
"""


def _released_mb_after_a_second(seconds: float) -> tuple[str, int]:
    return _probe(TRIM_PROBE, seconds)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim"),
                    reason="needs glibc (malloc_trim)")
def test_the_trim_thread_gives_back_the_holes_in_the_heap_and_without_it_glibc_keeps_them():
    started, released = _released_mb_after_a_second(0.1)
    assert started == "True" and released >= 40  # of the 50 MB of holes
    started, released = _released_mb_after_a_second(0)  # --malloc_trim_seconds 0: no thread
    assert started == "False" and released < 10


def test_the_trim_thread_stops_when_told():
    trimmer = trim_heap_every(0.01)
    if trimmer is None:
        pytest.skip("not glibc")
    assert trimmer.name == TRIM_THREAD_NAME and trimmer.daemon
    trimmer.stop()
    trimmer.join(timeout=5)
    assert not trimmer.is_alive()


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_trim_period_that_is_negative_or_not_finite_is_refused(value):
    with pytest.raises(ConfigError, match=r"^--malloc_trim_seconds \S+ must be 0 \(never\) or a positive number"):
        validate_static(parse_config(["--malloc_trim_seconds", value]))


def test_the_defaults_trim_every_thirty_seconds_under_glibcs_dynamic_threshold():
    config = parse_config([])
    assert (config.malloc_trim_seconds, config.mmap_threshold_mb) == (30.0, 0.0)
