"""``edgevit quant-report``: which layers lose accuracy in int8, and which to keep in float."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io
from ..export import artifact_contract, parse_size
from ..fidelity import sqnr_db
from ..lowering.rewrite import export_friendly
from ..models import create_model
from .calibration import load_image_set
from .sensitivity import emulate_int8, layer_sensitivity

KEEP_FLOAT_BELOW_DB = 30.0


def quant_report(model_id: str, calib: str | Path, out: str | Path | None = None, weights: str | Path | None = None,
                 labelset: str | None = None, calib_layout: str | None = None, input_size: str | None = None,
                 threshold_db: float = KEEP_FLOAT_BELOW_DB, progress: bool = True) -> dict[str, Any]:
    """Per-layer SQNR of emulated int8 (one layer at a time) on real images, the layers recommended to stay
    float (SQNR below ``threshold_db``) and the whole-model SQNR with and without them.
    Writes ``quant_report.json`` and ``quant_report.md`` into ``out`` when given."""
    model = create_model(model_id, weights=weights, labelset=labelset)
    size = parse_size(input_size) or model.contract.eval_size
    contract = artifact_contract(model.contract, size)
    images = load_image_set(calib, calib_layout, 16, contract.num_classes)
    xs = [contract.preprocess(im) for im in images.images]
    calib_x, eval_x = xs[: max(1, len(xs) * 3 // 4)], xs[len(xs) * 3 // 4:] or xs[:1]
    friendly, _ = export_friendly(model, torch.from_numpy(xs[0]))
    layers = layer_sensitivity(friendly, calib_x, eval_x, progress=progress)
    keep = [s.name for s in layers if s.sqnr_db < threshold_db]

    def whole(skip: list[str]) -> float:
        q = emulate_int8(friendly, calib_x, skip=skip)
        with torch.no_grad():
            return float(np.mean([sqnr_db(friendly(torch.from_numpy(x)).numpy(), q(torch.from_numpy(x)).numpy())
                                  for x in eval_x]))

    report = {
        "model": model_id, "weights": str(weights) if weights else None, "input": [1, 3, *size],
        "calibration": images.describe(), "threshold_db": threshold_db,
        "layers": [s.to_dict() for s in layers],
        "keep_float": [{"name": n, "why": f"emulated int8 SQNR below {threshold_db} dB"} for n in keep],
        "whole_model_sqnr_db": {"all_int8": whole([]), "with_keep_float": whole(keep)},
        "method": "one layer at a time in emulated int8 (per-channel symmetric weights, per-tensor affine "
                  "activations calibrated on the images); SQNR of the model output vs float",
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        io.write_json(out / "quant_report.json", report)
        io.write_text(out / "quant_report.md", render(report))
    return report


def render(report: dict[str, Any]) -> str:
    keep = {k["name"] for k in report["keep_float"]}
    lines = [f"**{report['model']}** emulated int8 sensitivity on {report['calibration']['count']} real images",
             "", "| layer | kind | SQNR dB | keep float |", "|---|---|---|---|"]
    for s in sorted(report["layers"], key=lambda s: s["sqnr_db"]):
        lines.append(f"| {s['name']} | {s['kind']} | {s['sqnr_db']:.1f} | {'yes' if s['name'] in keep else ''} |")
    w = report["whole_model_sqnr_db"]
    lines += ["", f"Whole model: {w['all_int8']:.1f} dB all int8, {w['with_keep_float']:.1f} dB keeping "
              f"{len(keep)} layer(s) float (threshold {report['threshold_db']} dB)."]
    return "\n".join(lines) + "\n"
