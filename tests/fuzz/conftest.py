"""Hypothesis budget for the fuzz harnesses: small in the default suite, larger on demand.

``ALBINGRESS_FUZZ_EXAMPLES=N`` sets the examples per harness (default 150: the whole directory
runs in a few seconds). A long run (40,000 examples per harness took 11 minutes for the three on
2 cores)::

    ALBINGRESS_FUZZ_EXAMPLES=40000 uv run pytest tests/fuzz -p no:timeout

A failure found is shrunk and printed by hypothesis; it then becomes an explicit case in the
harness's regression list (``@example``) so the default suite keeps it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("ALBINGRESS_FUZZ_EXAMPLES", "150"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=EXAMPLES <= 150,  # the default suite is reproducible
    database=None,
)
