"""Windowed measurement and the stability rule shared by the closed- and open-loop steps.

A step is steady when the throughput of three consecutive windows agrees within 10 % of their
mean; figures are then taken over those windows. A step that never settles stops after its
maximum number of windows and is reported as not steady.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Window:
    seconds: float
    requests: int  # answered with 2xx
    latencies_ms: Counter[int] = field(default_factory=Counter)  # rounded ms -> count
    statuses: Counter[int] = field(default_factory=Counter)  # every answer, by status (0 = connection error)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def is_steady(windows: list[Window], count: int = 3, tolerance: float = 0.10) -> bool:
    if len(windows) < count:
        return False
    last = [w.rps for w in windows[-count:]]
    mean = sum(last) / count
    return mean > 0 and all(abs(x - mean) <= tolerance * mean for x in last)


def percentile(hist: Counter[int], q: float) -> float:
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank = q / 100 * total
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def summarise(windows: list[Window], steady: bool, count: int = 3) -> dict[str, object]:
    """Figures over the last ``count`` windows (the steady ones when steady)."""
    used = windows[-count:]
    hist: Counter[int] = Counter()
    statuses: Counter[int] = Counter()
    for w in used:
        hist.update(w.latencies_ms)
        statuses.update(w.statuses)
    seconds = sum(w.seconds for w in used)
    out: dict[str, object] = {
        "steady": steady, "windows": len(windows), "measured_s": round(seconds, 2),
        "rps": sum(w.requests for w in used) / seconds if seconds else 0.0,
        "requests": sum(statuses.values()), "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }
    for q in PERCENTILES:
        out[f"p{q}_ms"] = percentile(hist, q)
    return out
