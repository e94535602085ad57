"""Handing freed host memory back to the operating system between search evaluations (glibc only).

Every xNES evaluation builds sliced models and runs them over the search images, then frees it all. After the first
large frees, glibc raises its mmap threshold, so later blocks of that size come from the heap, and the heap grows by
fragmentation instead of being reused: on the real ViT-Tiny with 128 search images the process grew from 2.0 to
3.9 GB in four evaluations (about 0.5 GB each, without bound). ``malloc_trim(0)`` after each evaluation kept it at
0.96 GB; it costs milliseconds against an evaluation's seconds. Elsewhere (macOS, musl) it is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library this process already uses
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS (``malloc_trim(0)``), where the C library offers it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
