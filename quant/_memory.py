"""Give freed heap memory back to the operating system (glibc), so that peak RSS reflects what is live.

ONNX Runtime parses each model it loads with malloc'd buffers and frees them once the session is
built; glibc keeps such freed memory in its heap. Calibration creates one session per stage
(quant/calibrators/calibrate.py), which left ~140 MB of freed heap resident for a ResNet-50: RSS
that the activation arena then stacked on top of. ``malloc_trim(0)`` returns it. A no-op where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache


@cache
def _malloc_trim() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return freed heap memory to the OS; True when the C library could do it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)  # type: ignore[operator]
    return True
