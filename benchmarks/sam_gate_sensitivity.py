"""How strict is the SAM mask-agreement gate for a given model? Agreement (mask mIoU vs float, the export gate's
measure) when Gaussian noise of a known SQNR is added to the float image embeddings, next to the embedding SQNR
of an exported artifact folder. With random weights the mask logits are small (|logit| ~ 0.5), so thresholding
at 0 flips pixels under small perturbations; the curve says what SQNR the 99.0 gate demands of an int8 encoder.

    .venv/bin/python benchmarks/sam_gate_sensitivity.py [--model efficientvit-sam-l0] [--weights W]
        [--artifacts DIR | --export-int8 DIR [--format pte|tflite|onnx] [--activations static|dynamic]
        [--ranges minmax|percentile] [--placement weighted|all]] [--levels 25,30,...] [--seed 0] [--limit 8] [--threads 2]

``--artifacts`` must hold the same weights (an export of ``--weights``, or of random weights with the same
``--seed``: ``export_sam`` on ``create_model`` right after ``torch.manual_seed(seed)``); ``--export-int8 DIR``
writes such a folder first (int8 encoder in ``--format``, default .pte, gate off; ``--activations dynamic`` for
run-time activation ranges, ``--ranges`` for the static range method, ``--placement`` for where static int8
quantizes; default: ``export_sam``'s). ``--levels ""`` skips the noise curve.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from edgevit import io  # noqa: E402
from edgevit.fidelity import sqnr_db  # noqa: E402
from edgevit.models import create_model  # noqa: E402
from edgevit.sam import Predictor  # noqa: E402
from edgevit.sam.evaluate import open_sam_dataset  # noqa: E402
from edgevit.sam.fidelity import FloatReference  # noqa: E402

SQNR_LEVELS_DB = (25, 30, 35, 40, 45, 50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientvit-sam-l0")
    ap.add_argument("--weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sam" / "grabcut50"))
    ap.add_argument("--calib", default=str(ROOT.parent / "shared" / "data" / "sam"))
    ap.add_argument("--limit", type=int, default=8, help="gate instances (the export gate's default)")
    ap.add_argument("--artifacts", help="exported folder of the same weights: its embedding SQNR and agreement")
    ap.add_argument("--export-int8", help="export the model to this folder first (.pte, int8 encoder, gate off)")
    ap.add_argument("--activations", default="static", choices=("static", "dynamic"),
                    help="int8 activations of the --export-int8 encoder")
    ap.add_argument("--format", default="pte", help="format of the --export-int8 folder: pte | tflite | onnx")
    ap.add_argument("--ranges", help="static int8 range method of the --export-int8 encoder: minmax | percentile")
    ap.add_argument("--placement", help="static int8 placement of the --export-int8 encoder: weighted | all")
    ap.add_argument("--levels", default=",".join(map(str, SQNR_LEVELS_DB)), help="noise SQNRs (dB), comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = create_model(a.model, weights=a.weights).eval()
    gate = open_sam_dataset(a.data)[: a.limit]
    if a.export_int8:
        from edgevit.sam.export import export_sam

        export_sam(model, a.format, "int8", a.export_int8, calib=a.calib, eval_data=a.data, eval_limit=a.limit,
                   threads=a.threads, gate=None, progress=True, activations=a.activations, ranges=a.ranges,
                   placement=a.placement)
        a.artifacts = a.artifacts or a.export_int8
    reference = FloatReference(Predictor(model), gate)
    eager = Predictor(model)
    lines = [f"{a.model} ({'weights ' + a.weights if a.weights else f'random weights, seed {a.seed}'}), "
             f"{len(gate)} instances of {a.data}, box + first click", "",
             "| embeddings | SQNR dB | mask mIoU vs float |", "|---|---|---|"]
    for db in [float(v) for v in a.levels.split(",") if v.strip()]:
        rng = np.random.default_rng(db)

        def noisy(x: np.ndarray, db: float = db, rng=rng) -> np.ndarray:
            e = eager.encode(x)
            scale = np.sqrt((e**2).mean() / 10 ** (db / 10))
            return e + (rng.normal(size=e.shape) * scale).astype(np.float32)

        fid = reference.measure(Predictor((noisy, eager.decode), contract=model.contract))
        lines.append(f"| float + Gaussian noise | {db} | {fid.miou:.2f} |")
    if a.artifacts:
        from edgevit.sam.export import load_sam_artifacts

        art = load_sam_artifacts(a.artifacts, threads=a.threads)
        sq = []
        for inst in gate:
            image = io.read_image(inst.image)
            p, q = Predictor(model), Predictor(art)
            p.set_image(image)
            q.set_image(image)
            sq.append(sqnr_db(p.embeddings, q.embeddings))
        fid = reference.measure(Predictor(art))
        recipe = art.encoder.manifest.quantization or {}  # the encoder's own manifest, loaded with it
        ranges = (recipe.get("calibration_method") or "").split(":")[0]
        place = (recipe.get("placement") or "").split(":")[0]
        label = (f"{art.model_id}{', ' + ranges + ' ranges' if ranges else ''}"
                 f"{', ' + place + ' placement' if place else ''}")
        lines.append(f"| {label} | {np.mean(sq):.1f} (min {min(sq):.1f}) | {fid.miou:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
