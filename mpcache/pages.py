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

__all__ = ["small_pages", "MIN_BYTES"]

#: buffers below this size keep the kernel's default (no system call)
MIN_BYTES = 4 << 20
_PAGE = mmap.PAGESIZE
_MADV_NOHUGEPAGE = 15          # Linux


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


def small_pages(a: np.ndarray) -> np.ndarray:
    """Advise 4 KiB pages (``madvise(MADV_NOHUGEPAGE)``) over the whole buffer of a fresh,
    not yet written array ``a`` of at least :data:`MIN_BYTES`; returns ``a``.  The range
    is widened to whole pages (the allocator's header before a large array is in the same
    mapping).  Values are unchanged; where the call is unavailable nothing happens."""
    if _LIBC is None or not isinstance(a, np.ndarray) or a.nbytes < MIN_BYTES:
        return a
    start = a.ctypes.data // _PAGE * _PAGE
    end = -(-(a.ctypes.data + a.nbytes) // _PAGE) * _PAGE
    _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_NOHUGEPAGE)
    return a
