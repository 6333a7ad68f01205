"""Segmentation accuracy-and-latency benchmark: every format × precision against eager fp32 PyTorch.

    .venv/bin/python benchmarks/seg_bench.py [--out runs/bench] [--runs 20] [--threads 2] [--only NAME]

Cases (issue targets: int8 .pte p50 <= 0.4x eager, int8 .tflite <= 0.5x eager, int8 within the gate):
- efficientvit-seg-b0-cityscapes at 512x1024 and efficientvit-seg-b1-ade20k at 512x512: random weights (no
  upstream checkpoint can be downloaded here), calibrated on the real VOC photos of ../shared/data; accuracy is
  agreement with float only (no labels in those label sets).
- efficientvit-seg-b0-voc at 512x512 with the trained checkpoint models/weights/efficientvit-seg-b0-voc.safetensors:
  mIoU against the real VOC labels, float vs every artifact.
Each case writes bench.json / bench.md / bench.html under --out/<case>/ and the tables are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgevit.harness.bench import bench

ROOT = Path(__file__).resolve().parents[1]
VOC = ROOT.parent / "shared" / "data" / "seg" / "voc2012_val14"
TRAINED = ROOT / "models" / "weights" / "efficientvit-seg-b0-voc.safetensors"

CASES = {
    "b0-cityscapes-512x1024": dict(model_id="efficientvit-seg-b0-cityscapes", input_size="512x1024", layout=None),
    "b1-ade20k-512x512": dict(model_id="efficientvit-seg-b1-ade20k", input_size="512x512", layout=None),
    "b0-voc-trained-512x512": dict(model_id="efficientvit-seg-b0-voc", input_size="512x512", layout="voc",
                                   weights=TRAINED),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=sorted(CASES), action="append")
    p.add_argument("--formats", default="pte,tflite,onnx")
    p.add_argument("--no-reuse", action="store_true")
    a = p.parse_args()
    if not VOC.is_dir():
        raise SystemExit(f"{VOC}: shared evaluation data not found (needed for calibration and accuracy)")
    for name in a.only or CASES:
        case = dict(CASES[name])
        bench(data=VOC, out=Path(a.out) / name, formats=tuple(a.formats.split(",")), precisions=("fp32", "int8"),
              threads=a.threads, runs=a.runs, reuse=not a.no_reuse, **case)
        print((Path(a.out) / name / "bench.md").read_text())


if __name__ == "__main__":
    main()
