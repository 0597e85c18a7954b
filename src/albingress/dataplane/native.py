"""The data plane's optional C part (``_speedups.c``): per-request counting and access log lines
(:class:`~albingress.dataplane._speedups.Observer`) and the access log's writer thread
(:class:`~albingress.dataplane._speedups.Writer`).

It is built at install when a C compiler is there (``setup.py``); without it, or with
``ALBINGRESS_PURE_PYTHON=1`` in the environment (to compare, or to rule it out), the same work is
done by the Python code of :mod:`.metrics` and :mod:`.accesslog`, with the same results.
"""

from __future__ import annotations

import os
from types import ModuleType

try:
    from albingress.dataplane import _speedups as _built
except ImportError:  # built without a C compiler
    _built = None  # type: ignore[assignment]


def speedups() -> ModuleType | None:
    """The C module, or None: not built, or turned off."""
    if os.environ.get("ALBINGRESS_PURE_PYTHON", "") not in ("", "0"):
        return None
    return _built


def built() -> bool:
    """Whether the C module was built (whether or not it is turned off)."""
    return _built is not None
