"""How torch's OpenMP threads wait between parallel regions: bounded spinning.

The engine runs many short parallel loops (small matrix products, gathers, per-layer
bookkeeping). Between two of them an OpenMP thread either spins, ready at once, or
sleeps and must be woken (~0.1 ms here). Measured on 2 cores (docs/performance.md):
sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) makes a small product 3–10× slower; the
library's default spin (300,000 turns) wastes a core each time the other one is busy
with another process. A bounded spin of :data:`SPIN_COUNT` turns (microseconds) is
fast in both cases. This only takes effect if set before torch is first imported, so
``import mechmoe`` does it; a user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``
always wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: Turns an idle OpenMP thread spins before it sleeps (libgomp's ``GOMP_SPINCOUNT``).
SPIN_COUNT = 10_000


def configure_openmp(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set the bounded spin unless the user chose a wait policy; whether it was set."""
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return False
    env["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True


__all__ = ["SPIN_COUNT", "configure_openmp"]
