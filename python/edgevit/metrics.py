"""Segmentation metrics from one accumulated confusion matrix.

Accumulate every image into a single :class:`ConfusionMatrix` and read the metrics at the end
(dataset-level IoU, as in the Cityscapes/ADE20K benchmarks, not a mean of per-image scores).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import EdgevitError
from .registry import Registry


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` as float64, NaN where ``den == 0``."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (without a warning) when there are none."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


class ConfusionMatrix:
    """Pixel counts ``matrix[t, p]``: target class ``t`` predicted as ``p`` (``(C, C)`` int64).

    Target pixels equal to ``ignore_index`` are skipped whatever their prediction.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one image: ``pred`` and ``target`` are integer ``(H, W)`` arrays of the same shape,
        values ``0..C-1`` (``target`` may also hold ``ignore_index``)."""
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.ndim != 2 or pred.shape != target.shape:
            raise EdgevitError(
                f"ConfusionMatrix.update: prediction shape {pred.shape} and target shape {target.shape} "
                "must be the same (H, W); resize the prediction to the label size"
            )
        for name, arr in (("prediction", pred), ("target", target)):
            if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
                raise EdgevitError(f"ConfusionMatrix.update: {name} has dtype {arr.dtype}; pass class indices")
        keep = target != self.ignore_index
        t = target[keep].astype(np.int64)
        p = pred[keep].astype(np.int64)
        c = self.num_classes
        for name, arr in (("target", t), ("prediction", p)):
            if arr.size and (arr.min() < 0 or arr.max() >= c):
                bad = np.unique(arr[(arr < 0) | (arr >= c)])[:8].tolist()
                raise EdgevitError(
                    f"ConfusionMatrix.update: {name} values {bad} are outside 0..{c - 1} "
                    f"(ignore index {self.ignore_index}); check num_classes and the label mapping"
                )
        self.matrix += np.bincount(c * t + p, minlength=c * c).reshape(c, c)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (e.g. from another worker); returns ``self``."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise EdgevitError(
                f"ConfusionMatrix.merge: {other.num_classes} classes / ignore {other.ignore_index} vs "
                f"{self.num_classes} / {self.ignore_index}; merge matrices of the same label set"
            )
        self.matrix += other.matrix
        return self

    @property
    def n_pixels(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self.matrix.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU, ``(C,)`` float64 in [0, 1]; NaN for a class in neither target nor prediction."""
        inter = np.diag(self.matrix)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - inter
        return _ratio(inter, union)

    def miou(self) -> float:
        """Mean IoU over the classes present in target or prediction (NaN if none)."""
        return _nanmean(self.iou())

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall, ``(C,)`` float64; NaN for a class absent from the target."""
        return _ratio(np.diag(self.matrix), self.matrix.sum(axis=1))

    def mean_accuracy(self) -> float:
        """Mean per-class accuracy over the classes present in the target (NaN if none)."""
        return _nanmean(self.class_accuracy())

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels (NaN if none)."""
        total = self.n_pixels
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready summary: ``miou``, ``pixel_accuracy``, ``mean_accuracy``, ``n_pixels`` and
        ``per_class_iou`` (class name, or index as a string, → IoU); NaN becomes ``None``."""
        names = [str(i) for i in range(self.num_classes)] if class_names is None else list(class_names)
        if len(names) != self.num_classes or len(set(names)) != len(names):
            raise ValueError(f"need {self.num_classes} distinct class names, got {len(names)}: {names[:5]}...")

        def clean(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        return {
            "miou": clean(self.miou()),
            "pixel_accuracy": clean(self.pixel_accuracy()),
            "mean_accuracy": clean(self.mean_accuracy()),
            "per_class_iou": {name: clean(v) for name, v in zip(names, self.iou())},
            "n_pixels": self.n_pixels,
        }


MetricFn = Callable[[ConfusionMatrix], float]

METRICS: Registry[MetricFn] = Registry("metric")
METRICS.add("miou", ConfusionMatrix.miou)
METRICS.add("pixel_accuracy", ConfusionMatrix.pixel_accuracy)
METRICS.add("mean_accuracy", ConfusionMatrix.mean_accuracy)
