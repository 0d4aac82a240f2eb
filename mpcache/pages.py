"""Page-level memory advice for share buffers (Linux; a no-op elsewhere).

A share buffer may hold a part that is never written: rep3's public zero component of
an input (``x_{o+2} = 0`` at two parties) and the KV cache's spare capacity.  Left
unwritten, that part takes no memory.  With transparent huge pages set to "always" (this
machine's kernel default), ONE write next to it faults a whole 2 MiB page in: a
decoding step's first cache append wrote one row per layer, K/V and KV head into the
zero half and so made 2 MiB of it resident each time (0.36 GB per party for SmolLM2 at
2048 cached tokens).  :func:`small_pages` asks for 4 KiB pages on such a buffer before
anything is written to it.
"""
from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np

__all__ = ["small_pages", "advise", "available", "MIN_BYTES", "MADV_DONTNEED",
           "MADV_NOHUGEPAGE"]

#: buffers below this size keep the kernel's default (no system call)
MIN_BYTES = 4 << 20
_PAGE = mmap.PAGESIZE
MADV_DONTNEED = 4              # Linux: private anonymous pages read back as zeros
MADV_NOHUGEPAGE = 15           # Linux: 4 KiB pages only


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def available() -> bool:
    """Whether ``madvise`` can be called here (Linux with a C library)."""
    return _LIBC is not None


def advise(a: np.ndarray, advice: int, inward: bool) -> int:
    """``madvise(advice)`` over the pages of ``a``'s buffer: ``inward`` -- only the pages
    wholly inside it (advice that changes contents, e.g. MADV_DONTNEED, must not reach a
    neighbour's bytes), else every page it touches.  Returns the bytes advised (0 where
    the call is unavailable or failed)."""
    if _LIBC is None:
        return 0
    lo, hi = a.ctypes.data, a.ctypes.data + a.nbytes
    if inward:
        start, end = -(-lo // _PAGE) * _PAGE, hi // _PAGE * _PAGE
    else:
        start, end = lo // _PAGE * _PAGE, -(-hi // _PAGE) * _PAGE
    if end <= start or _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start),
                                     advice):
        return 0
    return end - start


def small_pages(a: np.ndarray) -> np.ndarray:
    """Advise 4 KiB pages (``madvise(MADV_NOHUGEPAGE)``) over the whole buffer of a fresh,
    not yet written array ``a`` of at least :data:`MIN_BYTES`; returns ``a``.  The range
    is widened to whole pages (the allocator's header before a large array is in the same
    mapping).  Values are unchanged; where the call is unavailable nothing happens."""
    if isinstance(a, np.ndarray) and a.nbytes >= MIN_BYTES:
        advise(a, MADV_NOHUGEPAGE, inward=False)
    return a
