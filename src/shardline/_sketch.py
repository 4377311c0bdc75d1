"""A mergeable quantile sketch: exact for small samples, 1 % relative error beyond.

The report's percentiles (TTFT, latency; whole run and per shard) come from a
:class:`QuantileSketch` rather than from every sample, so a report's memory
does not grow with the number of items. The sketch has two modes:

* **Exact**, up to ``exact_limit`` samples (2,048 by default): it keeps the
  samples, and :meth:`QuantileSketch.percentile` is exactly
  :func:`shardline._report.percentile` of them.
* **Buckets**, beyond: the samples move into logarithmic buckets (the
  DDSketch mapping, Masson, Rim and Lee, VLDB 2019). With relative accuracy
  ``alpha`` and ``gamma = (1 + alpha) / (1 - alpha)``, bucket ``i`` counts the samples of
  magnitude in ``(gamma**(i-1), gamma**i]`` and stands for ``2 gamma**i / (gamma + 1)``, which
  is within ``alpha`` of every value in it. Negative values have buckets of their
  own; magnitudes below :data:`MIN_MAGNITUDE` (a nanosecond, for seconds)
  count as zero.

**Rank convention.** For ``n`` samples sorted as ``v[0] <= … <= v[n-1]``, the
``p``-th percentile is ``v[lo] + (v[hi] - v[lo]) * (h - lo)`` with
``h = (n - 1) * p / 100``, ``lo = floor(h)``, ``hi = min(lo + 1, n - 1)``: the
definition of ``numpy.percentile``. In bucket mode, ``v[lo]`` and ``v[hi]`` are
replaced by the representatives of the buckets holding the samples of rank
``lo`` and ``hi`` (0-based), clamped to the exact minimum and maximum (rank 0
is the minimum, rank ``n - 1`` the maximum), so
each is within ``alpha * |v[k]|`` of the true one. The interpolated result is then
within ``alpha * ((1 - f) |v[lo]| + f |v[hi]|)`` of the exact percentile, which is
``alpha`` times the exact percentile when the samples are not negative (as
durations are). p0 and p100 are always exact.

**Memory.** At most ``exact_limit`` doubles, then one ``int → int`` entry per
non-empty bucket: a bucket count that depends on the *range* of the values,
never on their number. Values from 1 ms to 1 hour at 1 % take at most 756
buckets; any two finite floats, at most about 37,000 per sign.

**Merge.** :meth:`QuantileSketch.merge` adds another sketch's samples: the
result is the sketch of the union (equal buckets, or the same exact samples),
whatever the order, so per-shard, per-process or per-actor sketches combine
into the sketch of the whole run without the samples.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable

from ._report import percentile

__all__ = [
    "DEFAULT_EXACT_LIMIT",
    "DEFAULT_RELATIVE_ACCURACY",
    "MIN_MAGNITUDE",
    "QuantileSketch",
]

#: Relative error of a percentile in bucket mode (1 %).
DEFAULT_RELATIVE_ACCURACY = 0.01
#: Samples kept exactly before the sketch switches to buckets.
DEFAULT_EXACT_LIMIT = 2048
#: Magnitudes below this count as zero in bucket mode (a nanosecond, in seconds).
MIN_MAGNITUDE = 1e-9


class QuantileSketch:
    """Percentiles of a stream of numbers in bounded memory, mergeable.

    Think of a histogram whose bins get wider in proportion to their values, so
    every bin is narrow *relative* to what it holds; until it has seen
    ``exact_limit`` values it simply keeps them. It is not a reservoir sample:
    nothing is random, and two sketches that saw the same values (in any order)
    answer the same.

    Example::

        >>> s = QuantileSketch()
        >>> for v in (0.1, 0.2, 0.3, 0.4):
        ...     s.add(v)
        >>> s.percentile(50)
        0.25

    Args:
        relative_accuracy: ``alpha``, the relative error of a percentile once the
            samples are in buckets; ``0 < alpha < 1``.
        exact_limit: Samples kept exactly before switching to buckets; ``>= 0``.

    Raises:
        ValueError: for a bound out of range.
    """

    __slots__ = (
        "_count",
        "_exact",
        "_exact_limit",
        "_gamma",
        "_inv_log_gamma",
        "_max",
        "_min",
        "_neg",
        "_pos",
        "_relative_accuracy",
        "_zeros",
    )

    def __init__(
        self,
        *,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        exact_limit: int = DEFAULT_EXACT_LIMIT,
    ) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be > 0 and < 1, got {relative_accuracy!r}")
        if exact_limit < 0:
            raise ValueError(f"exact_limit must be >= 0, got {exact_limit!r}")
        self._relative_accuracy = relative_accuracy
        self._exact_limit = exact_limit
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self._gamma)
        self._count = 0
        self._min = math.inf
        self._max = -math.inf
        # Exact mode: the samples; bucket mode: None and the three stores below.
        self._exact: array[float] | None = array("d")
        self._pos: dict[int, int] = {}
        self._neg: dict[int, int] = {}
        self._zeros = 0

    # -- properties

    @property
    def relative_accuracy(self) -> float:
        """``alpha``: the relative error of a percentile in bucket mode."""
        return self._relative_accuracy

    @property
    def exact_limit(self) -> int:
        """Samples kept exactly before switching to buckets."""
        return self._exact_limit

    @property
    def count(self) -> int:
        """Samples added (merged ones included)."""
        return self._count

    @property
    def is_exact(self) -> bool:
        """Whether every sample is still kept (percentiles are exact)."""
        return self._exact is not None

    @property
    def size(self) -> int:
        """Numbers held: the samples in exact mode, the non-empty buckets after."""
        if self._exact is not None:
            return len(self._exact)
        return len(self._pos) + len(self._neg) + (1 if self._zeros else 0)

    def __repr__(self) -> str:
        mode = "exact" if self._exact is not None else f"{self.size} buckets"
        return f"<QuantileSketch alpha={self._relative_accuracy:g}: {self._count} samples, {mode}>"

    # -- adding

    def add(self, value: float) -> None:
        """Add one sample.

        Raises:
            ValueError: if ``value`` is not finite.
        """
        if not math.isfinite(value):
            raise ValueError(f"a sketch sample must be finite, got {value!r}")
        self._count += 1
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value
        exact = self._exact
        if exact is not None:
            exact.append(value)
            if len(exact) > self._exact_limit:
                self._to_buckets()
            return
        self._bucket(value, 1)

    def extend(self, values: Iterable[float]) -> None:
        """Add every sample of ``values``."""
        for value in values:
            self.add(value)

    def merge(self, other: QuantileSketch) -> None:
        """Add every sample ``other`` holds: afterwards this is the sketch of the union.

        Raises:
            ValueError: if the two sketches differ in ``relative_accuracy`` or
                ``exact_limit`` (their buckets would not line up).
        """
        if (
            other._relative_accuracy != self._relative_accuracy
            or other._exact_limit != self._exact_limit
        ):
            raise ValueError(
                "cannot merge sketches with different parameters: "
                f"relative_accuracy {self._relative_accuracy!r} and "
                f"{other._relative_accuracy!r}, exact_limit {self._exact_limit!r} "
                f"and {other._exact_limit!r}"
            )
        if other._count == 0:
            return
        self._count += other._count
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        if self._exact is not None and other._exact is not None:
            self._exact.extend(other._exact)
            if len(self._exact) > self._exact_limit:
                self._to_buckets()
            return
        if self._exact is not None:
            self._to_buckets()
        if other._exact is not None:
            for value in other._exact:
                self._bucket(value, 1)
            return
        for store, theirs in ((self._pos, other._pos), (self._neg, other._neg)):
            for index, n in theirs.items():
                store[index] = store.get(index, 0) + n
        self._zeros += other._zeros

    def copy(self) -> QuantileSketch:
        """An independent sketch with the same samples."""
        new = QuantileSketch(
            relative_accuracy=self._relative_accuracy, exact_limit=self._exact_limit
        )
        new.merge(self)
        return new

    def _to_buckets(self) -> None:
        exact, self._exact = self._exact, None
        if exact is not None:
            for value in exact:
                self._bucket(value, 1)

    def _bucket(self, value: float, n: int) -> None:
        if value > MIN_MAGNITUDE:
            store = self._pos
        elif value < -MIN_MAGNITUDE:
            store, value = self._neg, -value
        else:
            self._zeros += n
            return
        index = math.ceil(math.log(value) * self._inv_log_gamma)
        store[index] = store.get(index, 0) + n

    # -- querying

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile (0..100), ``None`` without samples.

        Exact (``numpy.percentile``'s linear definition) while :attr:`is_exact`;
        within the relative error stated in the module docstring after.

        Raises:
            ValueError: if ``p`` is not within 0..100.
        """
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"p must be >= 0 and <= 100, got {p!r}")
        if self._count == 0:
            return None
        if self._exact is not None:
            return percentile(sorted(self._exact), p)
        h = (self._count - 1) * p / 100.0
        lo = math.floor(h)
        hi = min(lo + 1, self._count - 1)
        frac = h - lo
        a, b = self._ranks(lo, hi)
        if frac == 0.0 or a == b:
            return a
        return a + (b - a) * frac

    def _ranks(self, lo: int, hi: int) -> tuple[float, float]:
        """Estimates of the samples of 0-based ranks ``lo <= hi``, clamped to min..max.

        Rank 0 is the exact minimum and rank ``count - 1`` the exact maximum.
        """
        last = self._count - 1
        found: list[float] = []
        wanted = [lo, hi]
        seen = 0
        for value, n in self._buckets_in_order():
            seen += n
            while wanted and wanted[0] < seen:
                rank = wanted.pop(0)
                if rank == 0:
                    found.append(self._min)
                elif rank == last:
                    found.append(self._max)
                else:
                    found.append(min(max(value, self._min), self._max))
            if not wanted:
                break
        return found[0], found[1]

    def _buckets_in_order(self) -> Iterable[tuple[float, int]]:
        """``(representative, count)`` of each non-empty bucket, smallest value first."""
        for index in sorted(self._neg, reverse=True):
            yield -self._representative(index), self._neg[index]
        if self._zeros:
            yield 0.0, self._zeros
        for index in sorted(self._pos):
            yield self._representative(index), self._pos[index]

    def _representative(self, index: int) -> float:
        """``2 gamma**index / (gamma + 1)``: within alpha of every magnitude in the bucket."""
        try:
            return 2.0 * self._gamma**index / (self._gamma + 1.0)
        except OverflowError:  # the top bucket of the float range; clamped to max after
            return math.inf
