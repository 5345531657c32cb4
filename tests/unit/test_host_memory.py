"""A fixed mmap threshold keeps activation-sized tensors out of glibc's heaps (host_memory.py).

Each case runs in a fresh interpreter: glibc's threshold is process state. The probe frees a 16 MB
tensor (which raises glibc's dynamic threshold to 16 MB), then allocates an 8 MB one and reports the
bytes glibc holds in mmapped blocks (mallinfo2's hblkhd) while it is alive."""
import ctypes
import ctypes.util
import subprocess
import sys

import pytest

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


def _mmapped_bytes_of_an_8mb_tensor(threshold_mb: float) -> tuple[str, int]:
    result = subprocess.run([sys.executable, "-c", PROBE, str(threshold_mb)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    fixed, mmapped = result.stdout.split()
    return fixed, int(mmapped)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2"),
                    reason="needs glibc >= 2.33 (mallinfo2)")
def test_after_a_large_free_an_activation_still_gets_its_own_mapping_only_with_the_fixed_threshold():
    assert _mmapped_bytes_of_an_8mb_tensor(1.0) == ("True", pytest.approx(8 * 2**20, rel=0.01))
    fixed, mmapped = _mmapped_bytes_of_an_8mb_tensor(0)  # glibc's dynamic threshold: from the heap
    assert fixed == "False" and mmapped < 2**20
