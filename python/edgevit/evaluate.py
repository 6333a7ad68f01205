"""Segmentation evaluation: the upstream protocol, on any callable that maps model input to logits.

``evaluate_segmentation`` takes a PyTorch model from :func:`edgevit.create_model` or any callable
``f(x: float32 1×3×H×W) -> float32 1×C×H/8×W/8`` (an exported artifact's runner, a third-party model)
together with the contract that says how to pre- and post-process, so artifacts are measured exactly
like the float model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .data.segmentation import SegDataset
from .errors import EdgevitError
from .metrics import ConfusionMatrix
from .models.contract import SegContract

LogitsFn = Callable[[np.ndarray], np.ndarray]


def torch_logits_fn(model: nn.Module) -> LogitsFn:
    """Wrap an eager PyTorch model as numpy float32 1×3×H×W → numpy float32 logits."""

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return run


@dataclass
class SegEvaluation:
    """Result of :func:`evaluate_segmentation`; ``to_dict`` is JSON-ready."""

    model: str
    dataset: str
    confusion: ConfusionMatrix
    class_names: tuple[str, ...]
    seconds_per_image: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "dataset": self.dataset, "images": len(self.seconds_per_image)}
        out.update(self.confusion.to_dict(list(self.class_names)))
        if self.seconds_per_image:
            out["model_seconds_median"] = float(np.median(self.seconds_per_image))
        return out

    def table(self) -> str:
        """Markdown table: summary rows then per-class IoU for classes that occur."""
        d = self.to_dict()
        lines = [f"| {self.model} on {self.dataset} ({d['images']} images) | value |", "|---|---|",
                 f"| mIoU | {100 * d['miou']:.2f} |", f"| pixel accuracy | {100 * d['pixel_accuracy']:.2f} |",
                 f"| mean class accuracy | {100 * d['mean_accuracy']:.2f} |"]
        for name, iou in d["per_class_iou"].items():
            if iou is not None:
                lines.append(f"| IoU {name} | {100 * iou:.2f} |")
        return "\n".join(lines)


def evaluate_segmentation(
    model: nn.Module | LogitsFn,
    dataset: SegDataset,
    contract: SegContract | None = None,
    name: str | None = None,
    progress: bool = True,
) -> SegEvaluation:
    """mIoU, per-class IoU and pixel accuracy of ``model`` over ``dataset`` (one confusion matrix).

    Each image is pre-processed by ``contract`` (default: the model's own), the logits are upsampled
    bicubically to the label size and arg-maxed; pixels labelled 255 are ignored.
    """
    contract = contract or getattr(model, "contract", None)
    if contract is None:
        raise EdgevitError("evaluate_segmentation: a plain callable needs contract=...; pass the model's contract")
    if contract.num_classes != dataset.num_classes:
        raise EdgevitError(
            f"{getattr(dataset, 'root', 'dataset')}: has {dataset.num_classes} classes but the model predicts "
            f"{contract.num_classes} ({contract.labelset_name}); use a model trained for this label set"
        )
    fn = torch_logits_fn(model) if isinstance(model, nn.Module) else model
    cm = ConfusionMatrix(contract.num_classes, contract.labelset.ignore_index)
    result = SegEvaluation(
        name or getattr(model, "model_id", "model"), str(getattr(dataset, "root", "dataset")), cm,
        contract.labelset.classes,
    )
    for i in tqdm(range(len(dataset)), desc="eval", unit="img", disable=not progress):
        sample = dataset[i]
        x = contract.preprocess(sample.image)
        start = time.perf_counter()
        logits = fn(x)
        result.seconds_per_image.append(time.perf_counter() - start)
        _check_logits(logits, x, contract, sample.image_path)
        cm.update(contract.postprocess(logits[0], sample.label.shape), sample.label)
    return result


def _check_logits(logits: np.ndarray, x: np.ndarray, contract: SegContract, source: object) -> None:
    s = contract.output_stride
    want = (1, contract.num_classes, x.shape[2] // s, x.shape[3] // s)
    if tuple(logits.shape) != want:
        raise EdgevitError(f"{source}: model returned logits of shape {tuple(logits.shape)}, expected {want}")
