"""What one process granted in the shared budget, kept while it still counts.

If Redis loses its state (a restart without persistence: a new epoch), the requests this
process sent within the last window still count at the API, but the new Redis knows
nothing of them; every worker booking into it at once would let up to twice the budget
through. So each process keeps its own grants, per window and slot (the slots the scripts
use), and charges the live ones again before it books anything in the new epoch.

Constant size per window: only slots whose charge still counts are kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..limiter.window import SLOTS_PER_WINDOW
from .scripts import WindowSpec


class GrantLedger:
    def __init__(self, margin: float) -> None:
        self._margin = margin
        self._slots: dict[str, dict[int, float]] = {}  # window id -> slot -> amount

    def _expiry(self, spec: WindowSpec, slot: int) -> float:
        width = spec.per_seconds / SLOTS_PER_WINDOW
        return (slot + 1) * width + spec.per_seconds + self._margin

    def add(
        self,
        specs: Iterable[WindowSpec],
        slots: Mapping[int, int],
        tokens: float,
        requests: float,
        *,
        now: float,
    ) -> None:
        """Count ``tokens`` and ``requests`` (negative: taken back) in the windows' slots."""
        for i, spec in enumerate(specs):
            slot = slots.get(i)
            amount = tokens if spec.tokens else requests
            if slot is None or amount == 0:
                continue
            ring = self._slots.setdefault(spec.id, {})
            ring[slot] = max(0.0, ring.get(slot, 0.0) + amount)
            if len(ring) > 2 * SLOTS_PER_WINDOW:
                self._forget(spec, ring, now)

    def _forget(self, spec: WindowSpec, ring: dict[int, float], now: float) -> None:
        for slot in [k for k in ring if self._expiry(spec, k) <= now]:
            del ring[slot]

    def live(self, specs: Iterable[WindowSpec], now: float) -> list[str]:
        """Per window, the slots that still count at ``now``: "k1 a1 k2 a2 ..." (charge.lua)."""
        out = []
        for spec in specs:
            ring = self._slots.get(spec.id, {})
            self._forget(spec, ring, now)
            out.append(" ".join(f"{k} {a!r}" for k, a in sorted(ring.items()) if a > 0))
        return out
