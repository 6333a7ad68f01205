"""EfficientViT-SAM latency benchmark: image encoders and the prompt decoder, side by side in one run.

    .venv/bin/python benchmarks/sam_bench.py [--threads 2] [--runs 5] [--vit-runs 2] [--decoder-runs 20] [--out runs/sam_bench]
        [--artifacts efficientvit-sam-l0:pte:int8,efficientvit-sam-l0:tflite:fp32,...] [--exports runs/sam_exports]
        [--calib ../shared/data/sam] [--eval-data ../shared/data/sam/grabcut50] [--eval-limit 8]

Rows (random weights, same process, same threads; p50 of ``--runs`` timed calls after one warm-up, the rows
timed in interleaved rounds):
- efficientvit-sam-l0 / -xl0 image encoder, eager fp32 PyTorch, at 512 / 1024
- SAM ViT-B image encoder (our own implementation, benchmarks/sam_vit_b.py), eager fp32, at 1024
- the prompt decoder (16 prompt slots, mask input on) of L0, eager fp32
- exported artifacts (``--artifacts id:format:precision[:decoder_precision[:activations[:placement]]],...``;
  format pte | tflite | onnx, encoder at ``precision``, decoder at ``decoder_precision``, default fp32;
  ``activations`` of the int8 components: static (default) | dynamic; ``placement`` of static int8: weighted |
  all, default ``export_sam``'s): the folder ``--exports/<id>-<format>-<precision>`` (``-dec<decoder_precision>``
  appended when it is not fp32, ``-dynamic`` for dynamic activations, ``-<placement>`` when given) is reused
  when it exists, else written by ``export_sam``
  (int8 calibrated on the photos of ``--calib``, gated on ``--eval-data``; a failing gate is reported and that
  artifact skipped, unless ``--no-gate``, which writes it with the measured agreement). Encoder and decoder rows, timed through their runners on
  a real grabcut photo and its box prompt, with artifact size and the mask agreement measured at export
  (mask mIoU vs the float pipeline, 100 = identical).
Issue targets measured here: ViT-B / L0 encoder ratio; decoder time as a fraction of the L0 encoder; each
artifact encoder against its eager fp32 encoder and against ViT-B.
Writes ``sam_bench.json`` and ``sam_bench.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sam_vit_b import SamViTB  # noqa: E402

from edgevit import io  # noqa: E402
from edgevit.models import count_macs, count_params, create_model  # noqa: E402


@dataclass
class Row:
    name: str
    runner: str  # "eager fp32", later e.g. "pte int8"
    input: str
    params: int
    fn: Callable[[], object]
    runs: int
    p50_s: float = float("nan")
    size_mb: float | None = None
    agreement: float | None = None  # mask mIoU vs float, %
    model_id: str = ""
    samples: list[float] = field(default_factory=list)  # seconds, one per round (round k at index k)


def measure_interleaved(table: list[Row]) -> None:
    """One warm-up call per row, then round-robin rounds: round k times every row that wants a k-th run (rows
    with fewer runs, e.g. ViT-B, drop out early), so a load change on this shared machine hits every row alike
    instead of whichever rows were timed during it. Sets each row's ``p50_s``."""
    for row in table:
        print(f"warming up {row.name} ({row.runner}) ...", file=sys.stderr, flush=True)
        row.fn()
    times: list[list[float]] = [[] for _ in table]
    for k in range(max(row.runs for row in table)):
        print(f"round {k + 1} ...", file=sys.stderr, flush=True)
        for row, ts in zip(table, times):
            if k < row.runs:
                start = time.perf_counter()
                row.fn()
                ts.append(time.perf_counter() - start)
    for row, ts in zip(table, times):
        row.p50_s, row.samples = statistics.median(ts), ts


def _encoder_row(model_id: str, runs: int) -> tuple[Row, torch.nn.Module]:
    model = create_model(model_id)
    s = model.contract.image_size
    x = torch.randn(1, 3, s, s)
    return Row(f"{model_id} encoder", "eager fp32", f"1x3x{s}x{s}", count_params(model.image_encoder),
               lambda: _infer(model.image_encoder, x), runs, model_id=model_id), model


def _infer(module: torch.nn.Module, *args: torch.Tensor) -> object:
    with torch.inference_mode():
        return module(*args)


def rows(args: argparse.Namespace) -> tuple[list[Row], dict[str, float]]:
    l0_row, l0 = _encoder_row("efficientvit-sam-l0", args.runs)
    xl0_row, _ = _encoder_row("efficientvit-sam-xl0", args.runs)
    vit = SamViTB().eval()
    x = torch.randn(1, 3, 1024, 1024)
    vit_row = Row("SAM ViT-B encoder (ours)", "eager fp32", "1x3x1024x1024", count_params(vit),
                  lambda: _infer(vit, x), args.vit_runs)
    dec = l0.prompt_decoder.eval()
    p = l0.contract.max_points
    inputs = (torch.randn(1, 256, 64, 64), torch.rand(1, p, 2) * 1024, torch.tensor([[1.0, 0.0, 2.0, 3.0] + [-1.0] * (p - 4)]),
              torch.randn(1, 1, 256, 256), torch.ones(1))
    dec_row = Row("prompt decoder (L0)", "eager fp32", f"{p} prompt slots + mask", count_params(dec),
                  lambda: _infer(dec, *inputs), args.decoder_runs)
    macs = {"l0": count_macs(l0.image_encoder, (1, 3, 512, 512)), "vit": count_macs(vit, (1, 3, 1024, 1024))}
    return [l0_row, xl0_row, vit_row, dec_row], macs


def _artifact_rows(args: argparse.Namespace) -> list[Row]:
    """Encoder and decoder rows of each ``--artifacts`` entry (exported into ``--exports`` when missing)."""
    from edgevit import processing
    from edgevit.export import GateError
    from edgevit.sam import Predictor
    from edgevit.sam.evaluate import open_sam_dataset
    from edgevit.sam.export import export_sam, load_sam_artifacts

    inst = open_sam_dataset(args.eval_data, limit=1)[0]
    image = io.read_image(inst.image)
    table = []
    for spec in filter(None, args.artifacts.split(",")):
        parts = spec.split(":")
        if len(parts) not in (3, 4, 5, 6):
            raise SystemExit(f"--artifacts {spec!r}: expected "
                             "id:format:precision[:decoder_precision[:activations[:placement]]]")
        model_id, fmt, prec, dec_prec, act, place = parts + ["fp32", "static", ""][len(parts) - 3:]
        folder = Path(args.exports) / (f"{model_id}-{fmt}-{prec}" + ("" if dec_prec == "fp32" else f"-dec{dec_prec}")
                                       + ("" if act == "static" else f"-{act}") + (f"-{place}" if place else ""))
        if not (folder / "manifest.json").is_file():
            print(f"exporting {model_id} {fmt}/{prec} into {folder} ...", file=sys.stderr, flush=True)
            try:
                export_sam(model_id, fmt, prec, folder, calib=args.calib, eval_data=args.eval_data,
                           eval_limit=args.eval_limit, threads=args.threads, gate=None if args.no_gate else "default",
                           decoder_precision=dec_prec, activations=act, placement=place or None)
            except GateError as exc:
                print(f"skipped {spec}: {exc}", file=sys.stderr)
                continue
        art = load_sam_artifacts(folder, threads=args.threads)
        top, c = art.manifest, art.manifest["components"]
        s = art.contract.image_size
        x = processing.sam_image_to_input(image, s, art.contract.mean, art.contract.std)[0]
        pred = Predictor(art)
        pred.set_image(image)
        feed = dict(zip(art.decoder_inputs, (*pred.image_state, *pred.prompt_arrays(box=inst.box))))
        agreement = top["fidelity"]["mask_miou_vs_float"]
        placed = ((art.encoder.manifest.quantization or {}).get("placement") or "").split(":")[0]
        table.append(Row(f"{model_id} encoder", f"{fmt} {prec}" + ("" if act == "static" else f" ({act} act.)")
                         + (f" ({placed})" if placed and act == "static" else ""),
                         f"1x3x{s}x{s}", 0,
                         lambda e=art.encoder, x=x: e.run({"image": x}), args.runs,
                         size_mb=c["encoder"]["size_bytes"] / 1e6, agreement=agreement, model_id=model_id))
        table.append(Row(f"image context ({folder.name}, once per image)", f"{fmt} fp32", "1x256x64x64", 0,
                         lambda r=art.context, e=pred.embeddings: r.run({"embeddings": e}), args.decoder_runs,
                         size_mb=c["context"]["size_bytes"] / 1e6, agreement=agreement, model_id=model_id))
        table.append(Row(f"prompt decoder ({folder.name})", f"{fmt} {c['decoder']['precision']}",
                         f"{art.contract.max_points} prompt slots + mask", 0,
                         lambda d=art.decoder, f=feed: d.run(f), args.decoder_runs,
                         size_mb=c["decoder"]["size_bytes"] / 1e6, agreement=agreement, model_id=model_id))
    return table


def _ratios(table: list[Row]) -> list[str]:
    """Issue targets, from rows measured in this run."""
    eager = {r.model_id: r for r in table if r.runner == "eager fp32" and r.name.endswith(" encoder")}
    vit = next(r for r in table if r.name.startswith("SAM ViT-B"))
    l0_enc = [r for r in table if r.model_id == "efficientvit-sam-l0" and r.name.endswith(" encoder")]
    lines = []
    for r in table:
        if r.runner == "eager fp32" or not r.name.endswith(" encoder"):
            continue
        base = eager.get(r.model_id)
        vs_eager = f"{base.p50_s / r.p50_s:.2f}x faster than its eager fp32" if base else "no eager row"
        lines.append(f"{r.model_id} encoder {r.runner}: {vs_eager}; {vit.p50_s / r.p50_s:.1f}x faster than ViT-B")
    l0_eager = eager.get("efficientvit-sam-l0")
    for r in table:
        if r.name.startswith("prompt decoder"):
            shares = ", ".join(f"{100 * r.p50_s / e.p50_s:.1f}% of L0 encoder {e.runner}" for e in l0_enc)
            if l0_eager is not None:  # decoder / encoder timed in the same round: robust to load changes
                paired = statistics.median(d / e for d, e in zip(r.samples, l0_eager.samples))
                shares += f" (paired per round vs eager: {100 * paired:.1f}%)"
            lines.append(f"{r.name} {r.runner}: {shares}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vit-runs", type=int, default=2)
    ap.add_argument("--decoder-runs", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "runs" / "sam_bench"))
    ap.add_argument("--artifacts", default="", help="id:format:precision[:decoder_precision],... "
                                                    "e.g. efficientvit-sam-l0:pte:int8,efficientvit-sam-l0:tflite:fp32")
    ap.add_argument("--exports", default=str(ROOT / "runs" / "sam_exports"), help="exported folders (reused)")
    ap.add_argument("--calib", default=str(ROOT.parent / "shared" / "data" / "sam"), help="int8 calibration photos")
    ap.add_argument("--eval-data", default=str(ROOT.parent / "shared" / "data" / "sam" / "grabcut50"))
    ap.add_argument("--eval-limit", type=int, default=8, help="instances the export gate measures")
    ap.add_argument("--no-gate", action="store_true", help="export even when the mask gate fails (random weights)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    table, macs = rows(args)
    table += _artifact_rows(args)
    load_before = os.getloadavg()
    measure_interleaved(table)
    load_after = os.getloadavg()
    l0 = table[0].p50_s
    lines = [f"threads={args.threads}, torch {torch.__version__}; ratios against the L0 encoder in this run; "
             f"load average (1/5/15 min) {'/'.join(f'{v:.1f}' for v in load_before)} before, "
             f"{'/'.join(f'{v:.1f}' for v in load_after)} after",
             "", "| model | runner | input | params | size | p50 | vs L0 encoder | mask mIoU vs float |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        params = f"{r.params / 1e6:.1f}M" if r.params else "-"
        size = f"{r.size_mb:.1f} MB" if r.size_mb is not None else "-"
        agree = f"{r.agreement:.2f}" if r.agreement is not None else "-"
        lines.append(f"| {r.name} | {r.runner} | {r.input} | {params} | {size} | {r.p50_s * 1e3:.0f} ms | "
                     f"{r.p50_s / l0:.2f}x | {agree} |")
    lines += ["", f"ViT-B encoder / L0 encoder: {table[2].p50_s / l0:.1f}x (MACs {macs['vit'] / 1e9:.0f}G vs "
              f"{macs['l0'] / 1e9:.1f}G); prompt decoder = {100 * table[3].p50_s / l0:.1f}% of the L0 encoder",
              *_ratios(table)]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    io.write_text(out / "sam_bench.md", text + "\n")
    io.write_json(out / "sam_bench.json", {"threads": args.threads, "load_average": [load_before, load_after],
                                           "rows": [
        {"name": r.name, "runner": r.runner, "input": r.input, "params": r.params, "runs": r.runs, "p50_s": r.p50_s,
         "size_mb": r.size_mb, "mask_miou_vs_float": r.agreement} for r in table]})


if __name__ == "__main__":
    main()
