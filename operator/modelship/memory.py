"""The C heap of a long-running process with many threads (the operator).

glibc gives a thread that allocates while another holds the main arena an arena of its own,
up to 8 per core, and memory freed in an arena stays there for that arena's next
allocations. With some 50 threads parsing JSON and TLS records at once, the operator's
resident memory grew with the sum of the arenas' high-water marks while the Python objects
it held did not (bench/scale.py, 100 ModelDeployments: 75 MiB traced by tracemalloc, 290 MiB
resident; bench/README.md §7). Python's own small-object allocator takes its memory from the
main heap either way. Both functions do nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # mallopt's parameter (glibc's malloc.h)
ARENAS = 2


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap the arenas (whether it could). Call it before the threads start: arenas already
    made stay."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, arenas) == 1)


def trim() -> bool:
    """Hand the heap's free pages back to the system (whether any were)."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0) == 1)
