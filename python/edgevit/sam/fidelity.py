"""SAM artifact fidelity in mask terms: mask IoU of an artifact pipeline against the float pipeline.

Both pipelines are :class:`~edgevit.sam.Predictor` objects (same pre/post-processing); on every instance
(a real image with its given box and first click) they predict the box mask (single-mask output) and the
three multimask outputs of the first click. The IoU of each candidate mask with the float model's mask of
the same prompt and output index (full original-size masks; both empty counts as 1) is averaged per
instance and prompt; "mask mIoU vs float" is the mean over instances and prompts, in percent (100: the
artifact reproduces every float mask exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import io
from ..errors import EdgevitError
from .evaluate import Instance
from .predictor import Predictor

PROMPTS = ("box", "click1")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; 1.0 when both are empty."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def prompt_masks(predictor: Predictor, inst: Instance) -> dict[str, np.ndarray]:
    """The masks of :data:`PROMPTS` for ``inst`` (``set_image`` done by the caller): bool K×H×W each."""
    box, _, _ = predictor.predict(box=inst.box, multimask=False)
    click, _, _ = predictor.predict(points=[inst.first_click], labels=[1], multimask=True)
    return {"box": box, "click1": click}


@dataclass
class MaskAgreement:
    """Per-instance, per-prompt mask IoU (fraction) of the artifact against float; ``miou`` in percent."""

    per_instance: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def miou(self) -> float:
        return 100.0 * float(np.mean([v for d in self.per_instance.values() for v in d.values()]))

    def per_prompt(self) -> dict[str, float]:
        return {p: round(100.0 * float(np.mean([d[p] for d in self.per_instance.values()])), 3) for p in PROMPTS}

    def to_dict(self) -> dict[str, object]:
        worst = min(self.per_instance.items(), key=lambda kv: min(kv[1].values()))
        return {"mask_miou_vs_float": round(self.miou, 3), "per_prompt": self.per_prompt(),
                "instances": len(self.per_instance), "worst_instance": {worst[0]: worst[1]},
                "per_instance": self.per_instance}

    def summary(self) -> str:
        return f"mask mIoU vs float {self.miou:.2f} (box {self.per_prompt()['box']:.2f}, " \
               f"click1 {self.per_prompt()['click1']:.2f}) on {len(self.per_instance)} instances"


@dataclass(frozen=True)
class MaskGate:
    """Budget: mask mIoU vs float may drop at most ``max_drop`` points below 100."""

    max_drop: float = 1.0

    def failures(self, fid: MaskAgreement) -> list[str]:
        drop = 100.0 - fid.miou
        return [f"mask mIoU vs float {fid.miou:.2f} (drop {drop:.2f} > {self.max_drop} points)"] \
            if drop > self.max_drop else []

    def to_dict(self) -> dict[str, float]:
        return {"max_mask_miou_drop": self.max_drop}


class FloatReference:
    """The float pipeline's masks on ``instances``, computed once (the gate compares several attempts)."""

    def __init__(self, predictor: Predictor, instances: Sequence[Instance]):
        if not instances:
            raise EdgevitError("SAM fidelity needs at least one instance (image + box + first click)")
        self.instances = list(instances)
        self.images = [io.read_image(inst.image) for inst in self.instances]
        self.masks = []
        for inst, image in zip(self.instances, self.images):
            predictor.set_image(image)
            self.masks.append(prompt_masks(predictor, inst))

    def measure(self, candidate: Predictor) -> MaskAgreement:
        fid = MaskAgreement()
        for inst, image, ref in zip(self.instances, self.images, self.masks):
            candidate.set_image(image)
            got = prompt_masks(candidate, inst)
            fid.per_instance[inst.name] = {p: float(np.mean([mask_iou(r, g) for r, g in zip(ref[p], got[p])]))
                                           for p in PROMPTS}
        return fid
