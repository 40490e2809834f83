"""glibc's malloc, pinned so that large short-lived blocks go back to the kernel.

glibc serves a request of at least its mmap threshold (128 KiB at start) with its own
mmap, returned to the kernel when freed. But the threshold is dynamic: freeing such a block
raises it to the block's size, so that from then on the agent's large, short-lived strings
(a /metrics body of a few hundred KiB every scrape, a large OTLP request) come from the main
heap instead. Heap memory freed below a live block cannot be returned, and at the reference
load the heap stepped up by ~1.9 MiB at a time, twice in an hour (docs/performance.md,
"Cost"). Setting the threshold explicitly turns the dynamic adjustment off, as
`MALLOC_MMAP_THRESHOLD_` does: large blocks stay mmapped and go back when freed, at the cost
of one mmap and munmap per large block (a few per scrape).

Only on glibc, and not when the operator already chose the threshold in the environment.
"""

from __future__ import annotations

import os

#: glibc's initial threshold, now fixed.
MMAP_THRESHOLD = 128 * 1024
#: mallopt's parameter number for the threshold (malloc.h).
_M_MMAP_THRESHOLD = -3


def glibc() -> bool:
    """Whether this process runs on glibc."""
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (AttributeError, ValueError, OSError):  # no confstr, or not glibc
        return False


def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD; True if it was set here."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return False
    if not glibc():
        return False
    import ctypes  # noqa: PLC0415 (0.6 MiB, only where it is used)

    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
