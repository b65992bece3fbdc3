"""Quantile sketches of measured usage: bounded memory, 1 % relative accuracy.

:class:`QuantileSketch` is what :mod:`fleetflow_coordinator.usage` keeps per
(flow run, node) and per task for every measured quantity. Values can be binned
once (:func:`bin_values`) and added to several sketches alike
(:meth:`QuantileSketch.add_binned`): every measured attempt goes into its
node's row and its task's fleet-wide row, with the logarithms and bin counts
computed once for both.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import repeat
from operator import truediv
from typing import NamedTuple

__all__ = [
    "DEFAULT_GAMMA_LOG",
    "MAX_BINS",
    "RELATIVE_ACCURACY",
    "Binned",
    "QuantileSketch",
    "bin_values",
]

#: Relative accuracy of every quantile (1 %).
RELATIVE_ACCURACY = 0.01
#: Most bins one sketch keeps; the lowest are merged beyond this.
MAX_BINS = 512
#: Bins allowed above MAX_BINS before the lowest are merged (amortizes the merge).
_BIN_SLACK = 64
#: Values at or below this count as zero.
_TINY = 1e-9
#: ``log(gamma)`` of a sketch at :data:`RELATIVE_ACCURACY`.
DEFAULT_GAMMA_LOG = math.log((1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY))


class Binned(NamedTuple):
    """Values binned once for any number of sketches of one accuracy (:func:`bin_values`)."""

    #: The values, negatives as 0.
    clean: list[float]
    total: float
    lo: float
    hi: float
    #: How many are at or below ``_TINY`` (count as zero).
    zeros: int
    #: {bin index: values in it} of the others.
    keys: dict[int, int]
    #: ``log(gamma)`` of the sketches these bins are for.
    gamma_log: float


def bin_values(values: Sequence[float], gamma_log: float) -> Binned:
    """Bin ``values`` for :meth:`QuantileSketch.add_binned`.

    Args:
        values: Measured numbers (negative ones count as 0).
        gamma_log: ``log(gamma)`` of the sketches they are for.
    """
    clean = [v if v > 0.0 else 0.0 for v in values]
    if not clean:
        return Binned(clean, 0.0, math.inf, 0.0, 0, {}, gamma_log)
    lo = min(clean)
    if lo > _TINY:
        positive = clean
    else:
        positive = [v for v in clean if v > _TINY]
    # Counted in C: map over the logs, Counter's counting loop.
    keys = Counter(map(math.ceil, map(truediv, map(math.log, positive), repeat(gamma_log))))
    return Binned(clean, sum(clean), lo, max(clean), len(clean) - len(positive), keys, gamma_log)


class QuantileSketch:
    """Quantiles of a stream of non-negative numbers in bounded memory.

    A DDSketch-style log-bucketed histogram: a value ``x`` goes into bin
    ``ceil(log(x) / log(gamma))`` with ``gamma = (1 + a) / (1 - a)``, and a
    bin answers with a value within ``a`` (relative) of every value in it.
    Exact count, sum, min and max are kept beside the bins.

    Args:
        relative_accuracy: ``a``, e.g. 0.01 for 1 %.
        max_bins: Bins kept (512 cover a range of about 28,000:1 at 1 %);
            beyond, the lowest ones are merged, so only low quantiles of
            values spread wider than that lose accuracy.
    """

    __slots__ = ("_gamma_log", "_gamma", "max_bins", "bins", "zeros", "count", "total", "lo", "hi")

    def __init__(
        self, relative_accuracy: float = RELATIVE_ACCURACY, max_bins: int = MAX_BINS
    ) -> None:
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._gamma_log = math.log(self._gamma)
        self.max_bins = max_bins
        #: {bin index: values in it}
        self.bins: dict[int, int] = {}
        self.zeros = 0
        self.count = 0
        self.total = 0.0
        self.lo = math.inf
        self.hi = 0.0

    def add(self, value: float) -> None:
        """Add one value (negative values count as 0)."""
        value = max(0.0, float(value))
        self.count += 1
        self.total += value
        self.lo = min(self.lo, value)
        self.hi = max(self.hi, value)
        if value <= _TINY:
            self.zeros += 1
            return
        key = math.ceil(math.log(value) / self._gamma_log)
        bins = self.bins
        bins[key] = bins.get(key, 0) + 1
        if len(bins) > self.max_bins + _BIN_SLACK:
            # Merge the lowest bins into one, back down to max_bins (amortized).
            keys = sorted(bins)
            keep = keys[-self.max_bins]
            bins[keep] += sum(bins.pop(k) for k in keys[: -self.max_bins])

    def add_many(self, values: Sequence[float]) -> None:
        """Add several values; the same as :meth:`add` for each, in one loop."""
        if values:
            self.add_binned(bin_values(values, self._gamma_log))

    def add_binned(self, binned: Binned) -> None:
        """Add values binned once by :func:`bin_values` (for several sketches alike).

        The same as :meth:`add_many` of those values; a sketch of another
        accuracy than they were binned for bins them itself.
        """
        if binned.gamma_log != self._gamma_log:
            self.add_many(binned.clean)
            return
        clean = binned.clean
        if not clean:
            return
        self.count += len(clean)
        self.total += binned.total
        self.lo = min(self.lo, binned.lo)
        self.hi = max(self.hi, binned.hi)
        self.zeros += binned.zeros
        bins = self.bins
        for key, n in binned.keys.items():
            bins[key] = bins.get(key, 0) + n
        if len(bins) > self.max_bins + _BIN_SLACK:
            keys = sorted(bins)
            keep = keys[-self.max_bins]
            bins[keep] += sum(bins.pop(k) for k in keys[: -self.max_bins])

    def quantile(self, q: float) -> float:
        """The nearest-rank ``q``-quantile: the ``ceil(q * count)``-th smallest value.

        So the p95 of 2 values is the larger one, and the median of 4 the
        second. 0 when empty; within the relative accuracy of the exact
        value, and never outside ``[min, max]``.
        """
        if self.count == 0:
            return 0.0
        rank = max(0, math.ceil(round(min(max(q, 0.0), 1.0) * self.count, 9)) - 1)
        seen = self.zeros
        if seen > rank:
            return 0.0 if self.lo <= _TINY else self.lo
        for key in sorted(self.bins):
            seen += self.bins[key]
            if seen > rank:
                estimate = 2 * self._gamma**key / (self._gamma + 1)
                return min(max(estimate, self.lo), self.hi)
        return self.hi

    def summary(self) -> dict[str, float]:
        """``{"median", "p95", "max"}``."""
        return {"median": self.quantile(0.5), "p95": self.quantile(0.95), "max": self.hi}
