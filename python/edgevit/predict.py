"""Run a segmentation model on image files and write label maps, overlays and a summary."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from . import io, processing
from .errors import EdgevitError
from .evaluate import LogitsFn, torch_logits_fn
from .models.contract import SegContract


def predict_images(
    model: nn.Module | LogitsFn,
    images: Sequence[str | Path],
    out_dir: str | Path,
    contract: SegContract | None = None,
    progress: bool = True,
    extra_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Segment each image and write ``<stem>_labels.png`` (palette PNG of class ids, original size),
    ``<stem>_overlay.png`` (RGB uint8) and ``summary.json`` into ``out_dir``.

    Every input is read and checked before anything is written, and each file is written atomically,
    so a bad input leaves the output folder untouched. Returns the summary dict.
    """
    contract = contract or getattr(model, "contract", None)
    if contract is None:
        raise EdgevitError("predict_images: a plain callable needs contract=...; pass the model's contract")
    paths = [Path(p) for p in images]
    if not paths:
        raise EdgevitError("predict: no input images given; pass one or more image files")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise EdgevitError(f"predict: two inputs share the name {dup!r}; their outputs would overwrite each other")
    pixels = [io.read_image(p) for p in paths]  # validates every input first
    fn = torch_logits_fn(model) if isinstance(model, nn.Module) else model
    ls = contract.labelset
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for path, image in tqdm(list(zip(paths, pixels)), desc="predict", unit="img", disable=not progress):
        x = contract.preprocess(image)
        start = time.perf_counter()
        logits = fn(x)
        seconds = time.perf_counter() - start
        labels = contract.postprocess(logits[0], image.shape[:2])
        io.write_png(out / f"{path.stem}_labels.png", labels, palette=ls.palette)
        io.write_png(out / f"{path.stem}_overlay.png", processing.overlay(image, labels, ls.palette))
        ids, counts = np.unique(labels, return_counts=True)
        top = sorted(zip(counts.tolist(), ids.tolist()), reverse=True)[:5]
        records.append({
            "image": str(path), "size": list(image.shape[:2]), "model_input": list(x.shape),
            "model_seconds": round(seconds, 4), "labels": f"{path.stem}_labels.png",
            "overlay": f"{path.stem}_overlay.png",
            "top_classes": [{"class": ls.classes[c], "fraction": round(n / labels.size, 4)} for n, c in top],
        })
    summary = {"model": getattr(model, "model_id", "model"), **(extra_summary or {}),
               "contract": contract.to_dict() | {"labels": {"name": ls.name}}, "images": records}
    io.write_json(out / "summary.json", summary)
    return summary
