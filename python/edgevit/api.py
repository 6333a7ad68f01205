"""One-call functions behind the CLI: each ``edgevit <command>`` calls exactly one function here."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import io
from .cards import bundled_weights, load_card, parse_quantity
from .data.segmentation import open_segmentation_dataset
from .errors import EdgevitError
from .evaluate import SegEvaluation, evaluate_segmentation
from .models import SegContract, count_macs, count_params, create_model, get_model_entry
from .predict import predict_images
from .runtime import load_artifact

DEMO_MODEL = "efficientvit-seg-b0-voc"
# The trained checkpoint that ships with the repo (see its model card for how it was trained).
TRAINED_WEIGHTS = bundled_weights(DEMO_MODEL)
# Photos that ship inside the scikit-image wheel (no download needed): real images for predictions,
# int8 calibration and the fidelity measurements of the report.
DEMO_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "camera", "brick", "grass")


def model_info(model_id: str) -> dict[str, Any]:
    """Params, MACs at the evaluation size, I/O contract and model card of ``model_id``."""
    entry = get_model_entry(model_id)
    model = create_model(model_id)
    h, w = entry.contract.eval_size
    # Promptable segmentation: MACs of the image encoder (the published figure), params of the whole model.
    params, macs = count_params(model), count_macs(getattr(model, "image_encoder", model), (1, 3, h, w))
    card = load_card(model_id)
    info = {"id": model_id, "family": entry.family, "params": params, "macs": macs, "macs_input": [1, 3, h, w],
            "contract": entry.contract.to_dict(), "card": card}
    if "published" in card:
        pub = card["published"]
        info |= {"published": pub, "params_vs_published": params / parse_quantity(pub["params"])[0] - 1,
                 "macs_vs_published": macs / parse_quantity(pub["macs"])[0] - 1}
    return info


def predict(model_id: str, images: Sequence[str | Path], out: str | Path,
            weights: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Create ``model_id`` (optionally with ``weights``) and segment ``images`` into ``out``."""
    model = create_model(model_id, weights=weights)
    extra = {"weights": str(weights) if weights else "random initialisation (labels are meaningless)"}
    return predict_images(model, images, out, progress=progress, extra_summary=extra)


def evaluate(model_id: str, data: str | Path, layout: str, weights: str | Path | None = None,
             labelset: str | None = None, limit: int | None = None, out: str | Path | None = None,
             progress: bool = True) -> SegEvaluation:
    """mIoU of ``model_id`` — a registered id, or an exported artifact folder (run through its manifest) —
    on the dataset at ``data`` (``layout``: cityscapes, ade20k, voc, folder); writes ``eval.json`` and
    ``eval.md`` into ``out`` when given."""
    if Path(model_id).is_dir():
        runner = load_artifact(model_id)
        contract = SegContract.from_dict(runner.manifest.contract)
        name = f"{runner.manifest.model_id} ({runner.manifest.format}/{runner.manifest.precision})"
        dataset = open_segmentation_dataset(data, layout, num_classes=contract.num_classes, limit=limit)
        result = evaluate_segmentation(runner, dataset, contract=contract, name=name, progress=progress)
    else:
        model = create_model(model_id, weights=weights, labelset=labelset)
        dataset = open_segmentation_dataset(data, layout, num_classes=model.contract.num_classes, limit=limit)
        result = evaluate_segmentation(model, dataset, progress=progress)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        io.write_json(out / "eval.json", result.to_dict() | {"weights": str(weights) if weights else None})
        io.write_text(out / "eval.md", result.table() + "\n")
    return result


def _write_samples(folder: Path) -> list[Path]:
    try:
        from skimage import data as samples
    except ImportError:
        raise EdgevitError("demo needs scikit-image's bundled photos; install it with: pip install 'edgevit[samples]'")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DEMO_SAMPLES:
        image = getattr(samples, name)()
        image = image[0] if isinstance(image, tuple) else image  # stereo pairs: the left view
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        paths.append(folder / f"{name}.png")
        io.write_png(paths[-1], np.ascontiguousarray(image, dtype=np.uint8))
    return paths


def demo(out: str | Path, model_id: str = DEMO_MODEL, weights: str | Path | None = TRAINED_WEIGHTS,
         formats: tuple[str, ...] = ("pte", "tflite", "onnx"), precisions: tuple[str, ...] = ("fp32", "int8"),
         runs: int = 10, progress: bool = True) -> dict[str, Any]:
    """The main job on the local CPU with bundled sample photos: load the trained checkpoint, segment the
    photos (label maps, overlays), export to every format and precision (int8 calibrated on the photos,
    each artifact gated on its measured fidelity) and write the accuracy-and-latency report.

    Outputs under ``out``: ``inputs/``, ``predictions/``, ``bench/`` (artifacts, bench.md/.json/.html),
    ``summary.json``.
    """
    from .harness.bench import bench

    out = Path(out)
    if weights is not None and not Path(weights).is_file():
        raise EdgevitError(f"{weights}: trained checkpoint not found; pass --weights or train one with "
                           "'edgevit finetune' (see models/efficientvit-seg-b0-voc.yaml)")
    paths = _write_samples(out / "inputs")
    info = model_info(model_id)
    summary = predict(model_id, paths, out / "predictions", weights=weights, progress=progress)
    rows = bench(model_id, out / "inputs", out / "bench", weights=weights, formats=formats, precisions=precisions,
                 runs=runs, progress=progress)
    report = {
        "model": model_id, "weights": summary["weights"], "params": info["params"],
        "macs_at_eval_size": info["macs"],
        "host": {"machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
                 "threads": torch.get_num_threads()},
        "predictions": summary["images"],
        "bench": [{"format": r.format, "precision": r.precision, "status": r.status, "p50_ms": r.p50_ms,
                   "agreement": r.agreement, "size_mb": r.size_mb} for r in rows],
        "report": str(out / "bench" / "bench.html"),
    }
    io.write_json(out / "summary.json", report)
    return report
