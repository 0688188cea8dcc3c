"""
Fast large tensors on Linux: let glibc keep freed memory for reuse.

By default glibc's malloc serves every allocation above a threshold with a fresh `mmap` and
returns it to the kernel on free. SAE training and activation collection allocate and free
tensors of tens of megabytes every step, so each step page-faults its way through fresh memory:
on a 2-core machine that doubled the time of a dense SAE step. `reuse_freed_memory` raises
glibc's mmap and trim thresholds to 1 GiB, so such blocks come from (and return to) the heap and
are reused. The cost: up to that much freed memory stays with the process instead of going back to
the system. saekit's trainer and collector call it; set SAEKIT_DEFAULT_MALLOC=1 to keep glibc's
defaults. Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_applied = False


def reuse_freed_memory(threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); whether it is in effect."""
    global _applied
    if _applied or os.environ.get("SAEKIT_DEFAULT_MALLOC") or not sys.platform.startswith("linux"):
        return _applied
    try:
        libc = ctypes.CDLL("libc.so.6")
        _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc
        _applied = False
    return _applied
