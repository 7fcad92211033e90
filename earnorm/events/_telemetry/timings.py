"""Processing-time summaries: what each consumer records and how ``stats()`` merges them.

A consumer appends each processing time to a list (the only per-event cost: one append) and,
at each heartbeat, counts them into a log-scale histogram (8 buckets per doubling, so a
percentile read back from it is within 4.4% of the true value); past ``max_binned`` samples an
even stride of them is counted, each standing for several (adding the stride's sampling
error). Two histograms rotate every half window, so the summary it publishes covers the last
``window/2 .. window`` seconds. Histograms
from several consumers add up exactly, which percentiles computed per consumer would not.

>>> timings = ProcessingTimes(window=60)
>>> for ms in range(1, 101):
...     timings.record(ms / 1000)
>>> p = percentiles(timings.histogram())
>>> 47 < p["p50"] < 53 and 90 < p["p95"] < 100
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

_PER_DOUBLING = 8
_FLOOR_S = 1e-6  # anything faster counts as one microsecond


def bucket_of(seconds: float) -> int:
    """Histogram bucket for a duration: ``floor(8 * log2(microseconds))``."""
    if seconds <= _FLOOR_S:
        return 0
    return int(math.log2(seconds * 1e6) * _PER_DOUBLING)


def _bucket_ms(bucket: int) -> float:
    """The bucket's geometric midpoint, in milliseconds."""
    return float(2 ** ((bucket + 0.5) / _PER_DOUBLING) / 1000)


class ProcessingTimes:
    """A rolling histogram of processing times over the last ``window`` seconds."""

    def __init__(self, window: float = 60.0, max_binned: int = 10_000) -> None:
        self.window = window
        self.max_binned = max_binned
        self.samples: list[float] = []
        self.record = self.samples.append  # seconds; the hot path calls this directly
        self._current: dict[int, int] = {}
        self._previous: dict[int, int] = {}
        self._rotated = time.monotonic()

    def _bin(self) -> None:
        samples = self.samples
        if not samples:
            return
        stride = max(len(samples) // self.max_binned, 1)
        chosen = samples[::stride] if stride > 1 else samples
        weight = len(samples) / len(chosen)
        current, log2, floor = self._current, math.log2, _FLOOR_S
        counts: dict[int, int] = {}
        for seconds in chosen:
            bucket = int(log2(seconds * 1e6) * _PER_DOUBLING) if seconds > floor else 0
            counts[bucket] = counts.get(bucket, 0) + 1
        samples.clear()  # after the loop: ``chosen`` may be this very list
        for bucket, n in counts.items():
            current[bucket] = current.get(bucket, 0) + round(n * weight)

    def histogram(self) -> dict[int, int]:
        """The recent histogram (bucket -> count); rotates the halves when one is over."""
        self._bin()
        now = time.monotonic()
        if now - self._rotated >= self.window / 2:
            stale = now - self._rotated >= self.window
            self._previous = {} if stale else self._current
            self._current = {}
            self._rotated = now
        merged = dict(self._previous)
        for bucket, count in self._current.items():
            merged[bucket] = merged.get(bucket, 0) + count
        return merged


def merge(histograms: Iterable[Mapping[Any, int]]) -> dict[int, int]:
    """Add histograms; keys may be strings (they travel as JSON object keys)."""
    total: dict[int, int] = {}
    for histogram in histograms:
        for bucket, count in histogram.items():
            total[int(bucket)] = total.get(int(bucket), 0) + int(count)
    return total


def percentiles(histogram: Mapping[int, int]) -> dict[str, float | int | None]:
    """``{"count", "p50", "p95", "p99"}`` with times in milliseconds (None when empty)."""
    count = sum(histogram.values())
    out: dict[str, float | int | None] = {"count": count, "p50": None, "p95": None, "p99": None}
    if not count:
        return out
    ranked = sorted(histogram.items())
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        target = max(math.ceil(q * count), 1)
        seen = 0
        for bucket, n in ranked:
            seen += n
            if seen >= target:
                out[name] = round(_bucket_ms(bucket), 3)
                break
    return out
