"""Hypothesis budget for the fuzz harnesses: small in the default suite, larger on demand.

``ALBINGRESS_FUZZ_EXAMPLES=N`` sets the examples per harness (default 150: the whole directory
runs in a few seconds). A long run, for example ten minutes per harness::

    ALBINGRESS_FUZZ_EXAMPLES=200000 ALBINGRESS_FUZZ_SECONDS=600 uv run pytest tests/fuzz -p no:timeout

``ALBINGRESS_FUZZ_SECONDS`` bounds each harness's wall time (hypothesis stops generating when it is
spent). A failure found is shrunk and printed by hypothesis; it then becomes an explicit case in
the harness's regression list (``@example``) so the default suite keeps it.
"""

from __future__ import annotations

import os
import time

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("ALBINGRESS_FUZZ_EXAMPLES", "150"))
SECONDS = float(os.environ.get("ALBINGRESS_FUZZ_SECONDS", "0"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=EXAMPLES <= 150,  # the default suite is reproducible
    database=None,
)


class Budget:
    """Wall-time bound of a long run: ``spent()`` is True once ``ALBINGRESS_FUZZ_SECONDS`` passed
    since the harness began (never in the default run)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def spent(self) -> bool:
        return SECONDS > 0 and time.monotonic() - self.started > SECONDS
