"""Statistics of an offers run: per-step latency histograms and counts, retries, members over time.

Shared by the batch engine, its result writer, distributed chunks (whose histograms the coordinator
merges) and the run report; all of them bounded in memory whatever the number of members.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.http.aio import RetryEvent

# Histogram resolution: buckets 1% apart, so a percentile is within 1% of the exact value while
# memory stays a few hundred integers whatever the number of members (a list of floats per call
# was 100 MB at 1M members).
_LOG_STEP = math.log(1.01)


class LatencyHistogram:
    """Log-bucketed latencies (ms): percentiles within 1%, constant memory."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0

    def add(self, ms: float, times: int = 1) -> None:
        bucket = int(math.log(ms) / _LOG_STEP) if ms > 0.001 else -695  # log(0.001)/log(1.01)
        self.counts[bucket] = self.counts.get(bucket, 0) + times
        self.total += times

    def merge(self, counts: dict) -> None:
        """Add another histogram's bucket counts (keys may be text: they went through JSON)."""
        for bucket, count in counts.items():
            self.counts[int(bucket)] = self.counts.get(int(bucket), 0) + count
            self.total += count

    def percentile(self, q: float) -> float:
        rank = max(1, math.ceil(self.total * q / 100))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return math.exp((bucket + 0.5) * _LOG_STEP)  # the bucket's middle
        return 0.0


@dataclass
class StepStats:
    """Items, wall-clock span and a latency histogram of one step."""

    name: str
    items: int = 0
    seconds: float = 0.0
    latencies: LatencyHistogram = field(default_factory=LatencyHistogram)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ms: float, times: int = 1) -> None:
        with self._lock:
            self.items += times
            self.latencies.add(ms, times)

    def span(self, seconds: float) -> None:
        self.seconds = seconds

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": self.items, "seconds": round(self.seconds, 4),
                               "items_per_s": round(self.items / self.seconds, 1) if self.seconds > 0 else None}
        if self.latencies.total:
            out.update({f"p{q}_ms": round(self.latencies.percentile(q), 3) for q in (50, 95, 99)})
        return out


class StepLatencies:
    """Adds members' call latencies to their steps' statistics, a run of equal values at a time.

    The members of one batch call share its latency, so a 1,000-member batch is one ``add`` (one
    lock) per step instead of a thousand: per member, the adds were 0.43 s of a 100k-member local
    run's event loop (py-spy). The histogram is the one adding each member would give. Call
    ``flush`` before reading the statistics.
    """

    def __init__(self, steps: dict[str, StepStats]) -> None:
        self.steps = steps
        self._runs: dict[str, list] = {}  # step -> [latency ms, members]: equal latencies in a row, not yet added

    def add(self, step: str, ms: float | None) -> None:
        """One member's latency of ``step`` (None: the member did not reach it)."""
        if ms is None:
            return
        run = self._runs.get(step)
        if run is not None and run[0] == ms:
            run[1] += 1
            return
        if run is not None:
            self.steps[step].add(run[0], run[1])
        self._runs[step] = [ms, 1]

    def flush(self) -> None:
        for step, (ms, members) in self._runs.items():
            self.steps[step].add(ms, members)
        self._runs.clear()


@dataclass
class RetryTally:
    """Retries counted by upstream and reason, instead of a log line each (5,340 lines in one run)."""

    total: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    listener: Callable[[RetryTally, RetryEvent], None] | None = None

    def __call__(self, event: RetryEvent) -> None:
        self.total += 1
        key = f"{event.upstream}: {event.reason}"
        self.by_reason[key] = self.by_reason.get(key, 0) + 1
        if self.listener is not None:
            self.listener(self, event)


TIMELINE_POINTS = 500  # enough for a smooth progress chart; a 10M-member run still stores ~10 KB


class Timeline:
    """Members recorded over time, thinned to at most ``TIMELINE_POINTS`` points as it grows.

    The n-th write is kept when n is a multiple of the stride; when the list is full the stride
    doubles and the points off the new stride go. Memory stays flat however long the run, the
    points stay evenly spread, and the last point is always the latest.
    """

    def __init__(self, already_recorded: int = 0) -> None:
        self.total = already_recorded
        self._writes = 0
        self._kept: list[tuple[int, list[float]]] = [(0, [0.0, already_recorded])]  # (write number, point)
        self._stride = 1
        self._last: list[float] | None = None

    def add(self, seconds: float, members: int) -> None:
        self.total += members
        self._writes += 1
        self._last = [round(seconds, 3), self.total]
        if self._writes % self._stride:
            return
        self._kept.append((self._writes, self._last))
        if len(self._kept) >= TIMELINE_POINTS:
            self._stride *= 2
            self._kept = [(n, point) for n, point in self._kept if n % self._stride == 0]

    def points(self) -> list[list[float]]:
        points = [point for _, point in self._kept]
        if self._last is not None and points[-1] is not self._last:
            points.append(self._last)
        return points


def rate_text(items_per_s: float | None) -> str:
    """A throughput to three significant digits with thousands separators ("14,400,000", "12.3"):
    a step timed over microseconds (skipped members, say) otherwise prints 14378204.8."""
    if not items_per_s:
        return "-"
    rounded = float(f"{items_per_s:.3g}")
    return f"{rounded:,.0f}" if rounded >= 100 else f"{rounded:g}"
