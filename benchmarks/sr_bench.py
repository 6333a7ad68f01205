"""Super-resolution benchmark: PSNR/SSIM (Y) on Set5/Set14 ×2/×4, eager latency at 480×640 ×2, and peak memory
of tiled inference as the image grows. Prints markdown tables; writes JSON with --out.

    .venv/bin/python benchmarks/sr_bench.py [--data ../shared/data/sr] [--artifact DIR ...] [--out runs/sr_bench]

Rows: the MATLAB bicubic floor, the FSRCNN-sized baseline and EfficientViT-SR (fp32 eager) with the weights in
models/weights/. ``--artifact DIR`` adds one row per exported SR artifact folder (run through
``edgevit.load_artifact`` and tiled by its manifest's contract; its scale picks the tables it joins).
Latency rows are measured side by side in one process (interleaved, median); memory rows each in a fresh
subprocess (peak RSS, ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import edgevit
from edgevit.cards import bundled_weights
from edgevit.models.sr_common import SRContract
from edgevit.sr.evaluate import evaluate_sr
from edgevit.sr.tiling import upscale_tiled

ROOT = Path(__file__).resolve().parents[1]
MODELS = {2: ("fsrcnn-x2", "efficientvit-sr-s-x2"), 4: ("fsrcnn-x4", "efficientvit-sr-s-x4")}
MEMORY_SIZES = {"540p": (270, 480), "1080p": (540, 960), "4K": (1080, 1920)}  # x2 input sizes


def eager_rows(scale: int) -> list[tuple[str, object, SRContract | None]]:
    """(name, model or callable, contract) rows of one scale: bicubic first, then the trained eager models."""
    rows: list[tuple[str, object, SRContract | None]] = [("bicubic (MATLAB)", "bicubic", None)]
    for model_id in MODELS[scale]:
        w = bundled_weights(model_id)
        model = edgevit.create_model(model_id, weights=w if w.is_file() else None)
        rows.append((f"{model_id} fp32 eager" + ("" if w.is_file() else " (UNTRAINED)"), model, model.contract))
    return rows


def artifact_rows(folders: list[str]) -> dict[int, list[tuple[str, object, SRContract]]]:
    """Exported SR artifacts as rows, grouped by scale (name: model id, format, precision)."""
    out: dict[int, list] = {}
    for folder in folders:
        runner = edgevit.load_artifact(folder)
        m = runner.manifest
        contract = SRContract.from_dict(m.contract)
        out.setdefault(contract.scale, []).append((f"{m.model_id} {m.precision} {m.format}", runner, contract))
    return out


def quality(data: Path, artifacts: dict[int, list]) -> list[dict]:
    results = []
    for scale in (2, 4):
        for name, fn, contract in eager_rows(scale) + artifacts.get(scale, []):
            for ds in ("Set5", "Set14"):
                r = evaluate_sr(fn, data / ds, scale, contract=contract, name=name, progress=False)
                results.append({"model": name, "dataset": ds, "scale": scale, "psnr": r.psnr, "ssim": r.ssim})
                print(f"  {name} {ds} x{scale}: {r.psnr:.2f} dB", file=sys.stderr)
    return results


def quality_table(results: list[dict]) -> str:
    names = list(dict.fromkeys(r["model"].replace("-x2", "-xS").replace("-x4", "-xS") for r in results))
    cell = {(r["model"].replace("-x2", "-xS").replace("-x4", "-xS"), r["dataset"], r["scale"]): r for r in results}
    cols = [(ds, s) for s in (2, 4) for ds in ("Set5", "Set14")]
    lines = ["| model (xS = x2 / x4) | " + " | ".join(f"{ds} x{s}" for ds, s in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for n in names:
        vals = [cell.get((n, ds, s)) for ds, s in cols]
        lines.append(f"| {n} | " + " | ".join(f"{v['psnr']:.2f} / {v['ssim']:.4f}" if v else "-" for v in vals) + " |")
    bic = {(r["dataset"], r["scale"]): r["psnr"] for r in results if r["model"].startswith("bicubic")}
    lines += ["", "PSNR-Y gain over bicubic (dB):", "", "| model | " + " | ".join(f"{ds} x{s}" for ds, s in cols) + " |",
              "|---|" + "---|" * len(cols)]
    for n in names[1:]:
        vals = [cell.get((n, ds, s)) for ds, s in cols]
        lines.append(f"| {n} | " + " | ".join(f"{v['psnr'] - bic[(ds, s)]:+.2f}" if v else "-"
                                             for v, (ds, s) in zip(vals, cols)) + " |")
    return "\n".join(lines)


def latency(runs: int, threads: int) -> list[dict]:
    """Eager fp32 at 480×640 ×2, models interleaved run by run (same machine state), median seconds."""
    torch.set_num_threads(threads)
    models = [(m, edgevit.create_model(m)) for m in MODELS[2]]
    x = torch.rand(1, 3, 480, 640)
    times: dict[str, list[float]] = {m: [] for m, _ in models}
    with torch.inference_mode():
        for _, model in models:
            model(x)  # warm-up
        for _ in range(runs):
            for name, model in models:
                t = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - t)
    return [{"model": m, "threads": threads, "median_s": statistics.median(t), "min_s": min(t), "runs": runs,
             "macs": edgevit.count_macs(model, (1, 3, 480, 640))} for (m, model), t in zip(models, times.values())]


def _memory_child(model_id: str, h: int, w: int, tiled: bool) -> None:
    """Run in a fresh process: upscale one h×w image, print peak RSS (bytes) as JSON."""
    torch.set_num_threads(1)
    model = edgevit.create_model(model_id)
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if tiled:
        y = upscale_tiled(model, x, model.contract)
    else:
        with torch.inference_mode():
            y = model(torch.from_numpy(x)).numpy()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss": peak, "before": base, "output_bytes": y.nbytes, "input_bytes": x.nbytes}))


def memory(model_id: str, untiled_limit: str = "1080p") -> list[dict]:
    rows = []
    for label, (h, w) in MEMORY_SIZES.items():
        for tiled in (True, False):
            if not tiled and list(MEMORY_SIZES).index(label) > list(MEMORY_SIZES).index(untiled_limit):
                continue
            code = f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import sr_bench; " \
                   f"sr_bench._memory_child({model_id!r}, {h}, {w}, {tiled})"
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            rows.append({"model": model_id, "output": f"{2 * h}x{2 * w} ({label})", "tiled": tiled, **r})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sr"))
    p.add_argument("--artifact", action="append", default=[], help="exported SR artifact folder (repeatable)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: quality, latency, memory")
    p.add_argument("--out", help="write sr_bench.json here")
    a = p.parse_args()
    skip, report = set(a.skip.split(",")), {}
    if "quality" not in skip:
        report["quality"] = quality(Path(a.data), artifact_rows(a.artifact))
        print("## PSNR / SSIM on Y (BT.601), scale px shaved, MATLAB-bicubic LR files\n")
        print(quality_table(report["quality"]) + "\n")
    if "latency" not in skip:
        report["latency"] = latency(a.runs, a.threads)
        base = report["latency"][0]["median_s"]
        print(f"## Eager fp32 latency, 480x640 input x2, {a.threads} thread(s), median of {a.runs} interleaved runs\n")
        print("| model | MACs | median | min | vs baseline |\n|---|---|---|---|---|")
        for r in report["latency"]:
            print(f"| {r['model']} | {r['macs'] / 1e9:.2f}G | {1000 * r['median_s']:.0f} ms | {1000 * r['min_s']:.0f} ms | "
                  f"{base / r['median_s']:.2f}x faster |")
        print()
    if "memory" not in skip:
        report["memory"] = memory("efficientvit-sr-s-x2")
        print("## Peak RSS of x2 upscaling (efficientvit-sr-s-x2, 256px tiles, fresh process each)\n")
        print("The image arrays (input, its padded copy, output) must grow with the image; the rest should not.\n")
        print("| output | tiled | peak RSS | RSS before | image arrays | peak - before - arrays |\n|---|---|---|---|---|---|")
        for r in report["memory"]:
            arrays = r["output_bytes"] + 2 * r["input_bytes"]
            print(f"| {r['output']} | {'yes' if r['tiled'] else 'no'} | {r['peak_rss'] / 2**20:.0f} MiB | "
                  f"{r['before'] / 2**20:.0f} MiB | {arrays / 2**20:.0f} MiB | "
                  f"{(r['peak_rss'] - r['before'] - arrays) / 2**20:.0f} MiB |")
    if a.out:
        edgevit.io.write_json(Path(a.out) / "sr_bench.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
