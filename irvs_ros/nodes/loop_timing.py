"""Timing statistics of a periodic control loop since it started (numpy only; no ROS).

Per tick the loop reports its deadline, when it woke and when its work was done (seconds, one clock). Kept as
histograms (fixed bins, `resolution` s wide, up to `limit` s, one overflow bin) plus exact maxima, so the
percentiles over any run length cost constant memory and about a microsecond per tick:

    wake lateness wake - deadline (>= 0 for a loop on absolute deadlines)
    period error  |(wake - previous wake) - period|, between consecutive ticks (a skipped tick restarts it)
    work          done - wake (the tick's computation and publishing)

Percentiles are the upper edge of the bin that holds them (at most `resolution` above the true value); a
percentile in the overflow bin is reported as the exact maximum.
"""

from __future__ import annotations

import math

import numpy as np


class LoopTimingError(ValueError):
    """Invalid loop timing configuration."""


class _Histogram:
    def __init__(self, resolution: float, limit: float) -> None:
        self.resolution = resolution
        self.bins = int(math.ceil(limit / resolution))
        self.counts = [0] * (self.bins + 1)  # last bin: >= limit
        self.count = 0
        self.max = 0.0

    def add(self, value: float) -> None:
        i = int(value / self.resolution + 1e-9) if value > 0 else 0  # + 1e-9: an edge value goes to its own bin
        self.counts[i if i < self.bins else self.bins] += 1
        self.count += 1
        if value > self.max:
            self.max = value

    def percentile(self, q: float) -> float:
        """The q-th percentile (0 < q <= 100) in s; nan before the first sample."""
        if not self.count:
            return float("nan")
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, q / 100.0 * self.count))
        if i >= self.bins:
            return self.max
        return min((i + 1) * self.resolution, self.max)

    def above(self, threshold: float) -> int:
        """Samples >= threshold, counted by whole bins (threshold rounded down to a bin edge)."""
        return int(sum(self.counts[min(int(threshold / self.resolution + 1e-9), self.bins):]))


class LoopTiming:
    """Lateness, period error and work time of a loop with period `period` s (see the module docstring)."""

    def __init__(self, period: float, resolution: float = 1e-5, limit: float = 0.05) -> None:
        if not (math.isfinite(period) and period > 0):
            raise LoopTimingError(f"period must be a finite number of seconds > 0, got {period!r}")
        if not (math.isfinite(resolution) and 0 < resolution < limit and math.isfinite(limit)):
            raise LoopTimingError(f"need 0 < resolution < limit (s), got resolution {resolution!r}, limit {limit!r}")
        self.period = float(period)
        self.lateness = _Histogram(resolution, limit)
        self.period_error = _Histogram(resolution, limit)
        self.work = _Histogram(resolution, limit)
        self._last_wake: float | None = None

    def tick(self, deadline: float, wake: float, done: float) -> None:
        """One tick: its deadline, wake-up time and end of work (s, the loop's clock)."""
        self.lateness.add(wake - deadline)
        self.work.add(done - wake)
        if self._last_wake is not None:
            self.period_error.add(abs(wake - self._last_wake - self.period))
        self._last_wake = wake

    def skip(self) -> None:
        """Ticks were skipped: the next tick starts a new period-error sequence."""
        self._last_wake = None

    @property
    def ticks(self) -> int:
        return self.lateness.count

    def summary(self) -> dict[str, float | int]:
        """p50 / p99 / max of each statistic in ms, the tick count and the ticks whose period error is >= 1 ms
        and >= 5 ms."""
        out: dict[str, float | int] = {"timed_ticks": self.ticks}
        for name, hist in (("period_error", self.period_error), ("wake_lateness", self.lateness), ("work", self.work)):
            out[f"{name}_p50_ms"] = hist.percentile(50) * 1e3
            out[f"{name}_p99_ms"] = hist.percentile(99) * 1e3
            out[f"{name}_max_ms"] = hist.max * 1e3 if hist.count else float("nan")
        out["period_error_over_1ms"] = self.period_error.above(1e-3)
        out["period_error_over_5ms"] = self.period_error.above(5e-3)
        return out
