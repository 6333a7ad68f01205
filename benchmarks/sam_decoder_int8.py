"""Which parts of the SAM prompt decoder can take dynamic int8 activations: mask agreement and latency of the
.pte decoder with its declared float regions, and with the output upscaling's linears int8 too.

    .venv/bin/python benchmarks/sam_decoder_int8.py [--model efficientvit-sam-l0] [--seed 0] [--limit 8]
        [--threads 2] [--rounds 15] [--out runs/sam_decoder_int8]

Random weights (``torch.manual_seed(seed)`` then ``create_model``), an fp32 .pte encoder and context (written
to ``--out/fp32`` with the gate off, reused), so the agreement isolates the decoder: mask mIoU vs the float
pipeline on the export gate's ``--limit`` grabcut instances (box and first click). Latency: each decoder on a real
photo's embeddings and box prompt, timed in ``--rounds`` interleaved rounds (median).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from edgevit import io  # noqa: E402
from edgevit.lowering.base import get_backend  # noqa: E402
from edgevit.lowering.float_region import FloatRegion  # noqa: E402
from edgevit.manifest import Manifest  # noqa: E402
from edgevit.models import create_model  # noqa: E402
from edgevit.sam import export as sam_export  # noqa: E402
from edgevit.sam.evaluate import open_sam_dataset  # noqa: E402
from edgevit.sam.fidelity import FloatReference  # noqa: E402
from edgevit.sam.predictor import Predictor  # noqa: E402
from edgevit.sam.rewrite import decoder_float_regions, friendly_decoder  # noqa: E402

UPSCALING = "mask_decoder.output_upscaling"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientvit-sam-l0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sam" / "grabcut50"))
    ap.add_argument("--limit", type=int, default=8, help="gate instances (the export gate's default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=str(ROOT / "runs" / "sam_decoder_int8"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    torch.manual_seed(a.seed)
    model = create_model(a.model).eval()
    contract = model.contract
    if not (out / "fp32" / "manifest.json").is_file():
        sam_export.export_sam(model, "pte", "fp32", out / "fp32", eval_data=a.data, eval_limit=a.limit,
                              threads=a.threads, gate=None, progress=True)
    art = sam_export.load_sam_artifacts(out / "fp32", threads=a.threads)
    instances = open_sam_dataset(a.data)
    reference = FloatReference(Predictor(model), instances[: a.limit])
    probe = Predictor(model)
    probe.set_image(reference.images[0])
    prompts = probe.prompt_arrays(box=instances[0].box)
    example = tuple(torch.from_numpy(x) for x in (probe.embeddings, *prompts))
    dec, ctx, _ = friendly_decoder(model.prompt_decoder, example)
    extra = instances[a.limit: a.limit + 1]  # dynamic ranges: one sample only traces the graph
    calib = sam_export._decoder_calibration(model, contract, ctx, extra, [io.read_image(i.image) for i in extra])
    declared = decoder_float_regions(dec, "dynamic")
    variants = {"int8, declared float regions": declared,
                "int8, upscaling int8 too": [FloatRegion(r.name, tuple(m for m in r.modules if m != UPSCALING))
                                             for r in declared]}
    backend = get_backend("pte")
    dec_io = (sam_export._io(contract.decoder_artifact_inputs), sam_export._io(contract.decoder_outputs))
    runners = {"fp32": art.decoder}
    for i, (name, regions) in enumerate(variants.items()):
        path = out / f"decoder-{i}" / "model.pte"
        print(f"lowering the decoder: {name} ...", file=sys.stderr, flush=True)
        sam_export._lower(backend, dec, *dec_io, "int8", calib, (), path, tuple(regions), "dynamic")
        runners[name] = backend.load(path, Manifest(a.model, "pte", "int8", path.name, "", 0, *dec_io, {}, {}),
                                     a.threads)
    top = {"model_id": a.model, "format": "pte", "components": {"encoder": {"precision": "fp32"}}}
    agreement = {}
    for name, runner in runners.items():
        pair = sam_export.SamArtifacts(out / "fp32", top, art.encoder, art.context, runner, contract)
        agreement[name] = reference.measure(Predictor(pair)).miou
    image_context = art.context.run({"embeddings": probe.embeddings})["image_context"]
    feed = dict(zip(pair.decoder_inputs, (probe.embeddings, image_context, *prompts)))
    times: dict[str, list[float]] = {n: [] for n in runners}
    for r in runners.values():
        r.run(feed)
    for _ in range(a.rounds):
        for name, r in runners.items():
            start = time.perf_counter()
            r.run(feed)
            times[name].append(time.perf_counter() - start)
    print(f"{a.model}, seed {a.seed}, fp32 .pte encoder and context, {a.threads} threads, {a.rounds} interleaved "
          f"rounds; agreement on {a.limit} instances of {a.data}\n")
    print("| decoder (.pte) | mask mIoU vs float | p50 |\n|---|---|---|")
    for name in runners:
        print(f"| {name} | {agreement[name]:.2f} | {1000 * statistics.median(times[name]):.1f} ms |")


if __name__ == "__main__":
    main()
