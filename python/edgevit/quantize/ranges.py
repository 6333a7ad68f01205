"""Activation range methods for static int8: how a tensor's symmetric clipping threshold comes from calibration.

``minmax``: the largest |x| seen over the calibration samples. ``percentile``: the 99.99th percentile of |x|
over every element of every sample, from a streaming histogram (:class:`AbsHistogram`): memory per tensor is
one fixed array of bins whatever the sample count or tensor size, where onnxruntime's own histogram
calibrator keeps every intermediate output of every sample (24 GB and killed at one 480×640 SR tile).
Clipping the rare outliers gives the bulk of the values a finer int8 step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import EdgevitError
from ..registry import Registry

BINS = 4096


class AbsHistogram:
    """Streaming histogram of |x| over ``[0, width * bins)`` with equal bins.

    When a sample exceeds the covered range, neighbouring bins are merged pairwise (the width doubles) until it
    fits, so every value ever added is counted exactly once and the bin width stays within 2·max|x| / bins.
    """

    def __init__(self, bins: int = BINS):
        if bins < 2 or bins % 2:
            raise EdgevitError(f"AbsHistogram: bins must be an even number ≥ 2, got {bins}")
        self.counts = np.zeros(bins, np.int64)
        self.width = 0.0  # 0 until a nonzero value arrives (zeros are counted in bin 0 meanwhile)
        self.max = 0.0

    def add(self, x: np.ndarray) -> None:
        """Count the elements of ``x`` (any shape, finite floats)."""
        a = np.abs(np.asarray(x, np.float32)).ravel()
        if a.size == 0:
            return
        top = float(a.max())
        if not np.isfinite(top):
            raise EdgevitError("AbsHistogram: calibration tensor holds NaN or infinity")
        self.max = max(self.max, top)
        bins = self.counts.size
        if self.width == 0.0 and top > 0.0:
            self.width = top / (bins - 1)  # the first nonzero maximum lands in the last bin, with headroom
        while top >= self.width * bins and self.width > 0.0:
            self.counts = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.concatenate([self.counts, np.zeros(bins // 2, np.int64)])
            self.width *= 2.0
        if self.width == 0.0:
            self.counts[0] += a.size
            return
        index = np.minimum((a / self.width).astype(np.int64), bins - 1)
        self.counts += np.bincount(index, minlength=bins)

    def percentile(self, q: float) -> float:
        """The upper edge of the bin holding the ``q``-th percentile of |x| (0 < q ≤ 100), at most max|x|."""
        total = int(self.counts.sum())
        if total == 0:
            raise EdgevitError("AbsHistogram: no values were added")
        if not 0.0 < q <= 100.0:
            raise EdgevitError(f"AbsHistogram: percentile must be in (0, 100], got {q}")
        rank = np.searchsorted(np.cumsum(self.counts), q / 100.0 * total)
        return float(min((int(rank) + 1) * self.width, self.max))


@dataclass(frozen=True)
class RangeMethod:
    """How a tensor's symmetric int8 threshold is chosen from its calibration values."""

    name: str
    percentile: float | None  # None: the maximum of |x|
    description: str

    def threshold(self, hist: AbsHistogram) -> float:
        return hist.max if self.percentile is None else hist.percentile(self.percentile)


RANGE_METHODS: Registry[RangeMethod] = Registry("activation range method")
RANGE_METHODS.add("minmax", RangeMethod("minmax", None, "MinMax: the largest |x| over the calibration samples"))
RANGE_METHODS.add("percentile", RangeMethod(
    "percentile", 99.99, f"Percentile: the 99.99th percentile of |x| over all calibration values "
    f"(streaming {BINS}-bin histogram)"))
