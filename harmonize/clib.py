"""The C library, for what Python does not expose: giving freed memory back, and atomic swaps of paths."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import pyarrow as pa


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library (loaded once: finding it can start a subprocess), or None where it cannot be found."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except (OSError, TypeError):
        return None


def give_back_freed_memory() -> None:
    """Return freed pages to the OS now: Arrow's allocator keeps them for a second (so a step that
    frees and allocates columns in turn would peak at their sum), and the C heap keeps them until
    trimmed (glibc `malloc_trim`; elsewhere nothing). Called between build steps and between the
    split guard's checks."""
    pa.default_memory_pool().release_unused()
    trim = getattr(libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
