"""glibc malloc told to keep freed memory in the process, so that multi-megabyte uploads reuse warm pages.

Why: glibc serves allocations above 128 KiB (a threshold it raises as blocks are freed) with mmap, and
gives the top of the heap back to the kernel whenever more than 128 KiB of it is free. A service that
receives 2.5 MB films and decodes them into multi-megabyte arrays then asks the kernel for fresh pages
on every request, and each new page costs a fault and zeroing (measured: docs/design-notes.md).

The memory stays bounded: the heap keeps at most its own peak plus `retain_mib` free at the top, and the
peak is bounded by the queue capacity. Other C libraries (musl) have no mallopt: nothing is changed there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20
"""Blocks above this still get their own mapping (glibc's largest allowed value on 64-bit)."""
_TOP_PAD = 16 * 2**20
"""The heap grows in steps of this much, so a burst of uploads does not call brk for each."""


def retain_freed_memory(retain_mib: int) -> bool:
    """Keep up to `retain_mib` MiB of freed heap and serve blocks up to 32 MiB from the heap; 0 leaves
    glibc's defaults. True if glibc took the settings (False: not glibc, or a value refused)."""
    if retain_mib <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.info("no glibc mallopt here: the allocator keeps its defaults")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = {
        _M_TRIM_THRESHOLD: retain_mib * 2**20,
        _M_TOP_PAD: min(_TOP_PAD, retain_mib * 2**20),
        _M_MMAP_THRESHOLD: _MMAP_THRESHOLD,
    }
    # mallopt returns 1 on success, 0 when it refuses a value.
    accepted = all(mallopt(option, value) == 1 for option, value in settings.items())
    if not accepted:
        logger.warning("glibc refused a malloc setting; freed memory may go back to the kernel per request")
    return accepted
