"""glibc's allocator tuned for the force fields' CPU work.

A batched force-field call (forward and autograd backward through an equivariant network)
allocates and frees hundreds of tensors of a few hundred kB to tens of MB.  With glibc's
defaults each of the larger ones is an ``mmap``/``munmap`` pair whose pages the kernel zeroes
again on the next call, and the top of the heap is trimmed back to the system after every
step: on the 2-core development machine a third of a SevenNet-0 relaxation step went to the
kernel (``sys`` time).  Keeping blocks of up to 32 MiB on the heap, padding its growth and
not trimming it took SevenNet-0's batched prediction of 42 Li-P-S cells (562 atoms) from 3.06 to
2.21 s (1.39x) and a 20-step batched relaxation of them from 63.3 to 50.5 s (1.25x), the kernel's
share of it from 25 s to 0.3 s (``bench/allocator.py``, 2 cores).
GPAW's worker process is left alone: the same setting did not change its label times.

The price is resident memory: up to about :data:`TOP_PAD` that the process keeps after a
large step instead of giving it back.  Nothing is changed where the user set glibc's own
``MALLOC_*`` variables or ``GLIBC_TUNABLES``, with ``NODESTORE_MALLOC_TUNING=0``, or on a C
library without ``mallopt`` (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
#: blocks below this come from the heap, not a fresh mmap (glibc's ceiling on 64-bit)
MMAP_THRESHOLD = 32 * 1024 * 1024
#: the heap grows by this much more than asked and is trimmed back to it
TOP_PAD = 1024 * 1024 * 1024
#: free memory at the top of the heap returned to the system only beyond this
TRIM_THRESHOLD = 2 * 1024 * 1024 * 1024 - 1

_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
_done: bool | None = None


def _wanted() -> bool:
    if os.environ.get("NODESTORE_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return not any(v in os.environ for v in _ENV)


def tune_allocator() -> bool:
    """Apply the tuning to this process once; True when glibc took it."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not _wanted():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = all(mallopt(p, v) == 1 for p, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    return _done
