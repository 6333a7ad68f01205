"""Interactive segmentation evaluation of a SAM predictor on instance masks.

Protocols (``prompts``):

* ``box``: the ground-truth box, single-mask output (``multimask=False``).
* ``clickN`` (N = 1..15): click 1 is the dataset's first click (positive). With one click the three
  multimask outputs are produced and the one with the highest predicted IoU is kept. Every next click goes
  to the interior of the largest error region of the current mask (connected regions of false negatives
  and false positives, uncertain pixels excluded; the largest by area, false negatives first on ties), at
  the pixel farthest from the region's boundary (Euclidean distance transform, the image border counts as
  boundary, first pixel in row-major order on ties): positive in a missed area, negative in a false one.
  From the second click on, all clicks so far are given with ``multimask=False`` and the previous call's
  low-res logits as ``mask_input`` (SAM's interactive loop). click1/3/5 are prefixes of one click sequence.
* IoU per instance ignores uncertain pixels (``ignore_value``); both masks empty counts as IoU 1. The score
  of a protocol is the mean over instances.

Data layouts (auto-detected):

* ``prompts`` (grabcut50): ``prompts.json`` = list of ``{"image", "mask", "fg_value", "ignore_value",
  "box_xyxy", "first_click_xy"}`` (paths relative to the folder).
* ``instances`` (COCO-style): ``images/<stem>.{jpg,png}`` and ``masks/<stem>/<instance>.png``, one uint8 PNG
  per instance: 255 object, 0 background, 128 uncertain (ignored). Box and first click are derived from the
  mask as in grabcut50: box = (x_min, y_min, x_max + 1, y_max + 1) of the object pixels, first click = the
  object pixel farthest from the object's boundary (:func:`first_click`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..errors import EdgevitError, require
from .predictor import Predictor

PROTOCOL = re.compile(r"^(box|click([1-9]|1[0-5]))$")


@dataclass(frozen=True)
class Instance:
    """One object to segment: its image, mask (H×W uint8) conventions and the given prompts."""

    name: str
    image: Path
    mask: Path
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (original pixels, x1/y1 exclusive)
    first_click: tuple[int, int]  # x, y
    fg_value: int = 255
    ignore_value: int | None = 128


def _ndimage():
    return require("scipy.ndimage", "sam-eval", "the SAM click protocol (distance transform)")


def _farthest_from_boundary(region: np.ndarray) -> tuple[int, int]:
    """(x, y) of the region pixel with the largest distance to the nearest non-region pixel or border."""
    dist = _ndimage().distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def box_from_mask(fg: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) tight box of the True pixels, x1/y1 exclusive; error if there are none."""
    ys, xs = np.nonzero(fg)
    if not len(xs):
        raise EdgevitError("box_from_mask: the mask has no object pixels")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def first_click(fg: np.ndarray) -> tuple[int, int]:
    """(x, y) of the object pixel farthest from the object's boundary (the image border counts as boundary)."""
    if not fg.any():
        raise EdgevitError("first_click: the mask has no object pixels")
    return _farthest_from_boundary(fg)


def next_click(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> tuple[tuple[int, int], int] | None:
    """The corrective click for ``pred`` against ``gt`` (bool H×W; ``valid`` False on uncertain pixels).

    Returns ((x, y), label) — label 1 inside a missed area, 0 inside a false positive — or None when there
    is no error. See the module docstring for the placement rule.
    """
    nd = _ndimage()
    best: tuple[int, int, np.ndarray] | None = None  # (area, label, region)
    for label, err in ((1, gt & ~pred & valid), (0, pred & ~gt & valid)):
        comps, n = nd.label(err)
        if n == 0:
            continue
        areas = np.bincount(comps.ravel())[1:]
        k = int(np.argmax(areas))
        if best is None or areas[k] > best[0]:
            best = (int(areas[k]), label, comps == k + 1)
    if best is None:
        return None
    return _farthest_from_boundary(best[2]), best[1]


def iou_ignore(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> float:
    """IoU of bool masks over the ``valid`` pixels; 1.0 when both are empty there."""
    inter = np.count_nonzero(pred & gt & valid)
    union = np.count_nonzero((pred | gt) & valid)
    return 1.0 if union == 0 else inter / union


def open_sam_dataset(root: str | Path, limit: int | None = None) -> list[Instance]:
    """Instances of a folder in the ``prompts`` or ``instances`` layout (module docstring)."""
    root = Path(root)
    if (root / "prompts.json").is_file():
        try:
            records = json.loads((root / "prompts.json").read_text())
            items = [Instance(Path(r["image"]).stem, root / r["image"], root / r["mask"], tuple(r["box_xyxy"]),
                              tuple(r["first_click_xy"]), int(r.get("fg_value", 255)), r.get("ignore_value", 128))
                     for r in records]
        except (ValueError, KeyError, TypeError) as exc:
            raise EdgevitError(f"{root / 'prompts.json'}: not a list of prompt records ({exc!r})") from None
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        items = []
        for folder in sorted(p for p in (root / "masks").iterdir() if p.is_dir()):
            image = next((root / "images" / f"{folder.name}{ext}" for ext in (".jpg", ".jpeg", ".png")
                          if (root / "images" / f"{folder.name}{ext}").is_file()), None)
            if image is None:
                raise EdgevitError(f"{folder}: no image images/{folder.name}.jpg or .png for these masks")
            for mask in sorted(folder.glob("*.png")):
                fg = io.read_label(mask) == 255
                if fg.any():
                    items.append(Instance(f"{folder.name}/{mask.stem}", image, mask, box_from_mask(fg), first_click(fg)))
    else:
        raise EdgevitError(f"{root}: expected prompts.json, or images/ and masks/<image>/<instance>.png")
    if not items:
        raise EdgevitError(f"{root}: no instances found")
    return items[:limit] if limit else items


@dataclass
class SamEvaluation:
    """Mean IoU per protocol and the per-instance IoUs (fractions in [0, 1])."""

    name: str
    data: str
    prompts: tuple[str, ...]
    per_instance: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def miou(self) -> dict[str, float]:
        return {p: float(np.mean([v[p] for v in self.per_instance.values()])) for p in self.prompts}

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "data": self.data, "instances": len(self.per_instance),
                "miou": self.miou, "per_instance": self.per_instance}

    def table(self) -> str:
        head = f"{self.name} on {self.data} ({len(self.per_instance)} instances), mIoU %"
        rows = "\n".join(f"| {p} | {100 * v:.2f} |" for p, v in self.miou.items())
        return f"{head}\n\n| prompt | mIoU |\n|---|---|\n{rows}"


def _clicks(predictor: Predictor, inst: Instance, gt: np.ndarray, valid: np.ndarray,
            n: int) -> Iterator[float]:
    """IoU after each of ``n`` clicks (module docstring)."""
    points, labels = [list(inst.first_click)], [1]
    masks, scores, low = predictor.predict(points=points, labels=labels, multimask=True)
    best = int(np.argmax(scores))
    pred, prev = masks[best], low[best]
    yield iou_ignore(pred, gt, valid)
    for _ in range(n - 1):
        click = next_click(pred, gt, valid)
        if click is not None:
            points.append(list(click[0]))
            labels.append(click[1])
            masks, _, low = predictor.predict(points=points, labels=labels, mask_input=prev, multimask=False)
            pred, prev = masks[0], low[0]
        yield iou_ignore(pred, gt, valid)


def _predictor(model: Any, weights: str | Path | None) -> tuple[Predictor, str]:
    if isinstance(model, Predictor):
        return model, "predictor"
    if isinstance(model, str):
        from ..models import create_model

        return Predictor(create_model(model, weights=weights)), model
    return Predictor(model), getattr(model, "model_id", type(model).__name__)


def evaluate_sam(model: Any, data: str | Path, prompts: Sequence[str] = ("box", "click1", "click3", "click5"),
                 weights: str | Path | None = None, limit: int | None = None, out: str | Path | None = None,
                 progress: bool = True) -> SamEvaluation:
    """Interactive-segmentation mIoU of ``model`` on ``data`` per prompt protocol (module docstring).

    ``model``: a registered SAM id (with optional ``weights``), an EfficientViT-SAM module or a
    :class:`Predictor` (e.g. over artifact runners). Writes ``eval_sam.json`` and ``eval_sam.md`` into
    ``out`` when given.
    """
    prompts = tuple(prompts)
    bad = [p for p in prompts if not PROTOCOL.match(p)]
    if bad or not prompts:
        raise EdgevitError(f"evaluate_sam: unknown prompt protocol(s) {bad or prompts}; use box or click1..click15")
    instances = open_sam_dataset(data, limit)
    predictor, name = _predictor(model, weights)
    n_clicks = max((int(p[5:]) for p in prompts if p.startswith("click")), default=0)
    result = SamEvaluation(name, str(data), prompts)
    from tqdm import tqdm

    for inst in tqdm(instances, desc="eval-sam", disable=not progress, unit="instance"):
        label = io.read_label(inst.mask)
        gt = label == inst.fg_value
        valid = label != inst.ignore_value if inst.ignore_value is not None else np.ones_like(gt)
        predictor.set_image(io.read_image(inst.image))
        if gt.shape != predictor.original_size:
            raise EdgevitError(f"{inst.mask}: mask {gt.shape} and image {predictor.original_size} differ in size")
        scores: dict[str, float] = {}
        if "box" in prompts:
            masks, _, _ = predictor.predict(box=inst.box, multimask=False)
            scores["box"] = iou_ignore(masks[0], gt, valid)
        for i, value in enumerate(_clicks(predictor, inst, gt, valid, n_clicks), 1):
            if f"click{i}" in prompts:
                scores[f"click{i}"] = value
        result.per_instance[inst.name] = {p: scores[p] for p in prompts}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        io.write_json(out / "eval_sam.json", result.to_dict() | {"weights": str(weights) if weights else None})
        io.write_text(out / "eval_sam.md", result.table() + "\n")
    return result
