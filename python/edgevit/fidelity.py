"""Fidelity of an artifact against the float model on real images, and the accuracy gate.

Per image: logits SQNR and cosine against float, label maps at the image's own size (bicubic logits
upsampling, argmax), pixel agreement, and — when labels exist — mIoU of both against the labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .errors import EdgevitError
from .metrics import ConfusionMatrix
from .models.contract import SegContract
from .quantize.calibration import ImageSet

LogitsFn = Callable[[np.ndarray], np.ndarray]


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """10·log10(Σref² / Σ(ref − test)²); +inf when identical."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - test.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


@dataclass
class Fidelity:
    images: int
    agreement: float  # fraction of pixels with the float model's label
    miou_vs_float: float  # artifact labels scored against the float labels as reference
    sqnr_db: float  # mean over images
    cosine: float  # min over images
    miou_float: float | None = None  # vs ground-truth labels
    miou_artifact: float | None = None
    miou_drop: float | None = None  # points (×100), float minus artifact

    def summary(self) -> str:
        drop = f"{self.miou_drop:.2f} points" if self.miou_drop is not None else "n/a (no labels)"
        return f"agreement {100 * self.agreement:.2f}%, mIoU drop {drop}, SQNR {self.sqnr_db:.1f} dB"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready; non-finite values (SQNR of identical outputs, mIoU without classes) become None."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def measure(reference: LogitsFn, candidate: LogitsFn, contract: SegContract, images: ImageSet) -> Fidelity:
    """Compare ``candidate`` with ``reference`` (both numpy 1×3×H×W → logits) on ``images``."""
    c = contract.num_classes
    ignore = contract.labelset.ignore_index
    vs_float = ConfusionMatrix(c, ignore)
    float_gt, cand_gt = ConfusionMatrix(c, ignore), ConfusionMatrix(c, ignore)
    agree = total = 0
    sqnrs, coss = [], []
    for i, image in enumerate(images.images):
        x = contract.preprocess(image)
        ref, out = reference(x), candidate(x)
        if ref.shape != out.shape:
            raise EdgevitError(f"{images.names[i]}: artifact output {out.shape} differs from float {ref.shape}")
        sqnrs.append(sqnr_db(ref, out))
        coss.append(cosine(ref, out))
        ref_lab = contract.postprocess(ref[0], image.shape[:2])
        out_lab = contract.postprocess(out[0], image.shape[:2])
        agree += int(np.count_nonzero(ref_lab == out_lab))
        total += ref_lab.size
        vs_float.update(out_lab, ref_lab)
        if images.labels is not None:
            float_gt.update(ref_lab, images.labels[i])
            cand_gt.update(out_lab, images.labels[i])
    fid = Fidelity(len(images), agree / total, vs_float.miou(), float(np.mean(sqnrs)), float(np.min(coss)))
    if images.labels is not None:
        fid.miou_float, fid.miou_artifact = float_gt.miou(), cand_gt.miou()
        fid.miou_drop = 100.0 * (fid.miou_float - fid.miou_artifact)
    return fid


@dataclass(frozen=True)
class Gate:
    """Export budget against the float model. The mIoU criterion needs labelled images."""

    max_miou_drop: float = 1.0  # points
    min_agreement: float = 0.98

    def failures(self, fid: Fidelity) -> list[str]:
        out = []
        if fid.agreement < self.min_agreement:
            out.append(f"pixel agreement {100 * fid.agreement:.2f}% < {100 * self.min_agreement:.0f}%")
        if fid.miou_drop is not None and fid.miou_drop > self.max_miou_drop:
            out.append(f"mIoU drop {fid.miou_drop:.2f} points > {self.max_miou_drop}")
        return out

    def to_dict(self) -> dict[str, float]:
        return asdict(self)
