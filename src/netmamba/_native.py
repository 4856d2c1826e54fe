"""Loader for the optional native kernels built by setup.py from `netmamba/csrc/*.c`.

The kernels are plain C shared libraries called through ctypes (ctypes releases the GIL during
the call). `load(name)` returns the library, or None when it was not built; callers then use
their PyTorch fallback. The reason is logged once.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The native library `_native_<name>`, or None if it is missing or disabled.

    Setting NETMAMBA_NO_NATIVE=1 (or a comma-separated list of names) disables native kernels,
    which tests use to exercise the fallbacks.
    """
    disabled = os.environ.get("NETMAMBA_NO_NATIVE", "")
    if disabled == "1" or name in disabled.split(","):
        log.info("native kernel %r disabled by NETMAMBA_NO_NATIVE", name)
        return None
    candidates = sorted(_PACKAGE_DIR.glob(f"_native_{name}*.so")) + sorted(
        _PACKAGE_DIR.glob(f"_native_{name}*.pyd")
    )
    if not candidates:
        log.warning(
            "native kernel %r is not built (no C compiler at install time?); using the slower "
            "PyTorch fallback. Reinstall with a C compiler present to get it.",
            name,
        )
        return None
    try:
        return ctypes.CDLL(str(candidates[0]))
    except OSError as exc:
        log.warning("could not load native kernel %s: %s; using the fallback", candidates[0], exc)
        return None
