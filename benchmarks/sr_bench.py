"""Super-resolution benchmark, one command: export (or reuse) the SR artifacts, then PSNR/SSIM (Y) on Set5/Set14
×2/×4, latency at 480×640 ×2 and peak memory of tiled inference. Prints markdown; writes JSON with --out.

    .venv/bin/python benchmarks/sr_bench.py [--formats onnx,pte,tflite] [--precisions fp32,int8] [--scales 2,4]
        [--skip export,quality,latency,memory] [--work runs/sr_bench] [--threads 2] [--runs 5] [--x2-tile 480x640]
        [--baseline-artifacts] [--ours efficientvit-sr-s|efficientvit-sr-t] [--memory-inputs 480x640,1080p,4k]

Quality rows: the MATLAB bicubic floor, the FSRCNN-sized baseline and EfficientViT-SR fp32 eager (weights in
models/weights/), then one row per artifact (``--ours``-x{2,4} × format × precision), each run through its
runner with the runner's tiling (:func:`edgevit.sr.tiling.upscale_tiled`, the manifest's tile). Artifacts are
exported into ``--work/artifacts`` with the export gate (int8: PSNR-Y within 0.1 dB of float on Set5); one that
misses the gate is exported with ``--no-gate`` and its row says "GATE FAILED"; a failed export is a row with its
one-line reason. They are reused while the weights and the model source are unchanged (``--fresh`` re-exports).

Latency: 480×640 input ×2 at ``--threads``, every row interleaved run by run in one process (median): eager fp32
on the whole image (the reference), eager fp32 tiled like the artifacts, the FSRCNN baseline, and each ×2
artifact through its runner. The ×2 artifacts take ``--x2-tile`` tiles (default 480x640: one tile is the whole
frame; 640 covers it with 1.33× its pixels; the model's own 256 tile needs 12 tiles, 2.6× the pixels).
``--baseline-artifacts`` also exports the FSRCNN baseline ×2 in the same formats, precisions and tile, so ours and
the baseline are compared in each runtime, not only in eager PyTorch.
Memory: peak resident memory (VmHWM) of tiled ×2 upscaling in a fresh process per row and input size (480×640
and 1080×1920): it should not grow with the image beyond the image arrays.
Extra rows: ``--artifact DIR`` (repeatable) adds exported SR artifact folders.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import edgevit
from edgevit.cards import bundled_weights
from edgevit.errors import EdgevitError
from edgevit.harness.worker import proc_status_kib
from edgevit.manifest import read_manifest
from edgevit.models.sr_common import SRContract
from edgevit.sr.evaluate import evaluate_sr
from edgevit.sr.tiling import upscale_tiled

ROOT = Path(__file__).resolve().parents[1]
BASELINE, OURS = "fsrcnn-x{s}", "efficientvit-sr-s-x{s}"
LATENCY_INPUT = (480, 640)
MEMORY_INPUTS = {"480x640": (480, 640), "1080p": (1080, 1920), "4k": (2160, 3840)}  # x2 input sizes
CALIB = ROOT.parent / "shared" / "data" / "seg" / "voc2012_val14" / "images"  # photos that are not Set5/Set14


def _weights(model_id: str) -> Path | None:
    w = bundled_weights(model_id)
    return w if w.is_file() else None


def _sha(path: Path | None) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path else "untrained"


def _model_stamp(model_id: str) -> str:
    """sha256 of the weights, the model's source file and every lowering source (rewrites, backends, quantizers): a
    cached artifact is reused only while all hold."""
    import inspect

    from edgevit import lowering

    source = Path(inspect.getsourcefile(type(edgevit.create_model(model_id))))
    parts = (_weights(model_id), source, *sorted(Path(inspect.getsourcefile(lowering)).parent.glob("*.py")))
    return hashlib.sha256("".join(_sha(p) for p in parts).encode()).hexdigest()


# --- export ------------------------------------------------------------------------------------
def export_artifacts(work: Path, scales: list[int], formats: list[str], precisions: list[str], data: Path,
                     calib: Path, fresh: bool, skip: bool, tiles: dict[int, tuple[int, int]],
                     baseline: bool = False) -> list[dict]:
    """Export (or reuse) every (scale, format, precision) artifact at ``tiles[scale]`` ((h, w); absent: the model's
    tile), and with ``baseline`` the FSRCNN ×2 ones too; returns one record per artifact."""
    from edgevit.export import GateError, export

    records = []
    jobs = [(OURS.format(s=s), s) for s in scales] + ([(BASELINE.format(s=2), 2)] if baseline else [])
    for model_id, s in jobs:
        w = _weights(model_id)
        th, tw = tiles.get(s) or edgevit.create_model(model_id).contract.tile_hw
        tile = f"{th}x{tw}"
        for fmt in formats:
            for prec in precisions:
                folder = work / "artifacts" / f"{model_id}-{fmt}-{prec}-t{tile}"
                stamp = folder / "bench_stamp.json"
                rec = {"model": model_id, "scale": s, "format": fmt, "precision": prec, "folder": str(folder),
                       "tile": tile, "stamp": _model_stamp(model_id)}
                cached = json.loads(stamp.read_text()) if stamp.is_file() and not fresh else {}
                if cached.get("stamp") == rec["stamp"]:
                    records.append(cached)
                    continue
                if skip:
                    continue
                print(f"  export {model_id} {fmt}/{prec} ...", file=sys.stderr, flush=True)
                start = time.perf_counter()
                kw = dict(weights=w, calib=calib if prec == "int8" else None, eval_data=data / "Set5",
                          input_size=tile, progress=False)
                try:
                    try:
                        m = export(model_id, fmt, prec, folder, **kw)
                        rec["gate"] = "passed"
                    except GateError as exc:
                        rec["gate"] = f"GATE FAILED: {exc}"
                        m = export(model_id, fmt, prec, folder, gate=None, **kw)
                    rec.update(fidelity=m.fidelity["summary"], psnr_drop=m.fidelity["psnr_drop"],
                               float_regions=(m.quantization or {}).get("float_regions"),
                               export_s=round(time.perf_counter() - start, 1))
                    edgevit.io.write_json(stamp, rec)
                except EdgevitError as exc:
                    rec.update(gate="n/a", error=str(exc).splitlines()[0][:300])
                print(f"    {rec.get('fidelity') or rec.get('error')}", file=sys.stderr, flush=True)
                records.append(rec)
    return records


def _artifact_name(rec: dict) -> str:
    name = f"{rec['model']} {rec['precision']} {rec['format']}"
    return name + (" (GATE FAILED)" if str(rec.get("gate", "")).startswith("GATE FAILED") else "")


# --- quality -----------------------------------------------------------------------------------
def eager_rows(scale: int) -> list[tuple[str, object, SRContract | None]]:
    """(name, model or callable, contract) rows of one scale: bicubic first, then the trained eager models."""
    rows: list[tuple[str, object, SRContract | None]] = [("bicubic (MATLAB)", "bicubic", None)]
    for model_id in (BASELINE.format(s=scale), OURS.format(s=scale)):
        w = _weights(model_id)
        model = edgevit.create_model(model_id, weights=w)
        rows.append((f"{model_id} fp32 eager" + ("" if w else " (UNTRAINED)"), model, model.contract))
    return rows


def quality(data: Path, scales: list[int], artifacts: list[dict], extra: list[str]) -> list[dict]:
    results = []
    for scale in scales:
        rows = eager_rows(scale)
        for rec in [r for r in artifacts if r["scale"] == scale]:
            if "error" in rec:
                results += [{"model": _artifact_name(rec), "dataset": ds, "scale": scale, "error": rec["error"]}
                            for ds in ("Set5", "Set14")]
                continue
            runner = edgevit.load_artifact(rec["folder"])
            rows.append((_artifact_name(rec), runner, SRContract.from_dict(runner.manifest.contract)))
        for folder in extra:
            runner = edgevit.load_artifact(folder)
            m = runner.manifest
            contract = SRContract.from_dict(m.contract)
            if contract.scale == scale:
                rows.append((f"{m.model_id} {m.precision} {m.format} ({folder})", runner, contract))
        for name, fn, contract in rows:
            for ds in ("Set5", "Set14"):
                r = evaluate_sr(fn, data / ds, scale, contract=contract, name=name, progress=False)
                results.append({"model": name, "dataset": ds, "scale": scale, "psnr": r.psnr, "ssim": r.ssim})
                print(f"  {name} {ds} x{scale}: {r.psnr:.2f} dB", file=sys.stderr, flush=True)
    return results


def quality_table(results: list[dict]) -> str:
    key = lambda r: r["model"].replace("-x2", "-xS").replace("-x4", "-xS")  # noqa: E731
    names = list(dict.fromkeys(key(r) for r in results))
    cell = {(key(r), r["dataset"], r["scale"]): r for r in results}
    cols = [(ds, s) for s in sorted({r["scale"] for r in results}) for ds in ("Set5", "Set14")]
    bic = {(r["dataset"], r["scale"]): r["psnr"] for r in results if r["model"].startswith("bicubic")}
    ref = {(ds, s): cell[(OURS.format(s="S") + " fp32 eager", ds, s)]["psnr"] for ds, s in cols
           if (OURS.format(s="S") + " fp32 eager", ds, s) in cell}

    def fmt(v: dict | None, what: str, ds: str, s: int) -> str:
        if v is None:
            return "-"
        if "error" in v:
            return "export failed"
        if what == "abs":
            return f"{v['psnr']:.2f} / {v['ssim']:.4f}"
        base = bic if what == "bicubic" else ref
        return f"{v['psnr'] - base[(ds, s)]:+.3f}" if (ds, s) in base else "-"

    head = "| {} | " + " | ".join(f"{ds} x{s}" for ds, s in cols) + " |"
    sep = "|---|" + "---|" * len(cols)
    lines = [head.format("model (xS = x2 / x4): PSNR-Y dB / SSIM-Y"), sep]
    lines += [f"| {n} | " + " | ".join(fmt(cell.get((n, ds, s)), "abs", ds, s) for ds, s in cols) + " |" for n in names]
    lines += ["", head.format("PSNR-Y gain over bicubic (dB)"), sep]
    lines += [f"| {n} | " + " | ".join(fmt(cell.get((n, ds, s)), "bicubic", ds, s) for ds, s in cols) + " |"
              for n in names[1:]]
    lines += ["", head.format("PSNR-Y vs ours fp32 eager (dB; the export gate: >= -0.1 on Set5)"), sep]
    lines += [f"| {n} | " + " | ".join(fmt(cell.get((n, ds, s)), "ours", ds, s) for ds, s in cols) + " |"
              for n in names if n.startswith(OURS.format(s="S")) and "eager" not in n]
    return "\n".join(lines)


# --- latency -----------------------------------------------------------------------------------
def latency(artifacts: list[dict], runs: int, threads: int) -> list[dict]:
    """480×640 ×2, all rows interleaved run by run in one process; median and min seconds."""
    torch.set_num_threads(threads)
    ours = edgevit.create_model(OURS.format(s=2), weights=_weights(OURS.format(s=2)))
    base = edgevit.create_model(BASELINE.format(s=2), weights=_weights(BASELINE.format(s=2)))
    x = np.random.default_rng(0).random((1, 3, *LATENCY_INPUT), dtype=np.float32)

    def eager(model):
        def run():
            with torch.inference_mode():
                model(torch.from_numpy(x))
        return run

    first = next((r for r in artifacts if r["model"] == OURS.format(s=2) and "error" not in r), None)
    tiled = SRContract.from_dict(read_manifest(first["folder"], verify=False)[0].contract) if first else ours.contract
    tile = "x".join(map(str, tiled.tile_hw))
    rows = [(f"{OURS.format(s=2)} fp32 eager, whole image", eager(ours), None),
            (f"{OURS.format(s=2)} fp32 eager, tiled {tile}", lambda: upscale_tiled(ours, x, tiled), None),
            (f"{BASELINE.format(s=2)} fp32 eager, whole image", eager(base), None)]
    for rec in artifacts:
        if rec["scale"] != 2 or "error" in rec:
            continue
        runner = edgevit.load_artifact(rec["folder"], threads=threads)
        contract = SRContract.from_dict(runner.manifest.contract)
        rows.append((f"{_artifact_name(rec)}, tiled {'x'.join(map(str, contract.tile_hw))}",
                     lambda r=runner, c=contract: upscale_tiled(r, x, c), rec))
    times: dict[str, list[float]] = {name: [] for name, _, _ in rows}
    for _, fn, _ in rows:
        fn()  # warm-up
    for _ in range(runs):
        for name, fn, _ in rows:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return [{"row": name, "threads": threads, "median_s": statistics.median(times[name]), "min_s": min(times[name]),
             "runs": runs} for name, _, _ in rows]


# --- memory ------------------------------------------------------------------------------------
def _memory_child(source: str, h: int, w: int, threads: int) -> None:
    """Run in a fresh process: tiled ×2 upscaling of one h×w image by ``source`` (an artifact folder or an eager
    model id); prints VmHWM (peak), RSS after loading + one warm-up tile, and the image arrays' bytes, as JSON."""
    torch.set_num_threads(threads)
    if Path(source).is_dir():
        fn = edgevit.load_artifact(source, threads=threads)
        contract = SRContract.from_dict(fn.manifest.contract)
    else:
        fn = edgevit.create_model(source, weights=_weights(source))
        contract = fn.contract
    upscale_tiled(fn, np.zeros((1, 3, *contract.tile_hw), np.float32), contract)
    before = proc_status_kib("VmRSS") * 1024
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    y = upscale_tiled(fn, x, contract)
    print(json.dumps({"peak": proc_status_kib("VmHWM") * 1024, "before": before, "arrays": x.nbytes + y.nbytes}))


def memory(artifacts: list[dict], threads: int, inputs: tuple[str, ...] = ("480x640", "1080p")) -> list[dict]:
    sources = [(f"{OURS.format(s=2)} fp32 eager", OURS.format(s=2))]
    sources += [(_artifact_name(r), r["folder"]) for r in artifacts if r["scale"] == 2 and "error" not in r]
    rows = []
    for name, source in sources:
        for label in inputs:
            h, w = MEMORY_INPUTS[label]
            code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import sr_bench; "
                    f"sr_bench._memory_child({source!r}, {h}, {w}, {threads})")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if proc.returncode:
                rows.append({"row": name, "input": label, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"row": name, "input": f"{h}x{w} ({label})", **result})
    return rows


# --- main --------------------------------------------------------------------------------------
def _load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _tiles(spec: str) -> dict[int, tuple[int, int]]:
    """``--x2-tile`` → {2: (h, w)}; "0" → {} (the model's own tile)."""
    h, _, w = spec.partition("x")
    return {} if spec == "0" else {2: (int(h), int(w or h))}


def main() -> int:
    global OURS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ours", default="efficientvit-sr-s", help="our variant: efficientvit-sr-s | efficientvit-sr-t")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sr"))
    p.add_argument("--calib", default=str(CALIB), help="int8 calibration photos (not the evaluation sets)")
    p.add_argument("--work", default=str(ROOT / "runs" / "sr_bench"), help="artifact cache and sr_bench.json")
    p.add_argument("--formats", default="onnx,pte,tflite")
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--scales", default="2,4", help="scales of the quality table (latency and memory: x2)")
    p.add_argument("--x2-tile", default="480x640", help="input tile HxW (or one int: square) of the x2 artifacts "
                                                         "(480x640: one tile per frame); 0: the model's own tile")
    p.add_argument("--baseline-artifacts", action="store_true", help="also export and time the FSRCNN x2 baseline "
                                                                     "in the same formats and precisions")
    p.add_argument("--artifact", action="append", default=[], help="extra exported SR artifact folder (repeatable)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", default="", help="comma-separated: export (use cached artifacts only), quality, "
                                               "latency, memory")
    p.add_argument("--memory-inputs", default="480x640,1080p", help=f"x2 input sizes of the memory rows: "
                   f"{', '.join(MEMORY_INPUTS)}")
    p.add_argument("--fresh", action="store_true", help="re-export even when cached artifacts match the weights")
    p.add_argument("--out", help="also write sr_bench.json here (default: --work)")
    a = p.parse_args()
    OURS = a.ours + "-x{s}"
    skip = set(filter(None, a.skip.split(",")))
    scales = [int(s) for s in a.scales.split(",")]
    formats, precisions = a.formats.split(","), a.precisions.split(",")
    work = Path(a.work)
    report: dict = {"load_average_start": _load_average(), "threads": a.threads}
    report["artifacts"] = export_artifacts(work, scales, formats, precisions, Path(a.data), Path(a.calib), a.fresh,
                                           "export" in skip, _tiles(a.x2_tile), a.baseline_artifacts)
    print(f"load average at start: {report['load_average_start']} (shared machine: timings are noisy)\n")
    print("## Artifacts (export gate: PSNR-Y on Set5 within 0.1 dB of float)\n")
    print("| artifact | tile | gate | fidelity at export | float region |\n|---|---|---|---|---|")
    for r in report["artifacts"]:
        region = ", ".join(f"{g['name']} ({', '.join(g['modules'])}{' + output tail' if g['output_tail'] else ''})"
                           for g in r.get("float_regions") or []) or "-"
        gate = "passed" if r.get("gate") == "passed" else ("FAILED" if "GATE" in str(r.get("gate")) else r.get("gate"))
        print(f"| {_artifact_name(r)} | {r['tile']} | {gate} | {r.get('fidelity') or r.get('error')} | {region} |")
    print()
    if "quality" not in skip:
        report["quality"] = quality(Path(a.data), scales, report["artifacts"], a.artifact)
        print("## PSNR / SSIM on Y (BT.601), scale px shaved, MATLAB-bicubic LR files; artifacts tiled by the runner\n")
        print(quality_table([r for r in report["quality"]]) + "\n")
    if "latency" not in skip:
        report["latency"] = latency(report["artifacts"], a.runs, a.threads)
        ref = report["latency"][0]["median_s"]
        tiled = report["latency"][1]["median_s"]
        h, w = LATENCY_INPUT
        print(f"## Latency, {h}x{w} input x2, {a.threads} threads, median of {a.runs} interleaved runs, one process\n")
        print("| row | median | min | speed-up vs eager fp32 whole image | vs eager fp32 tiled |\n"
              "|---|---|---|---|---|")
        for r in report["latency"]:
            print(f"| {r['row']} | {1000 * r['median_s']:.0f} ms | {1000 * r['min_s']:.0f} ms | "
                  f"{ref / r['median_s']:.2f}x | {tiled / r['median_s']:.2f}x |")
        print(f"\nload average after latency: {_load_average()}\n")
    if "memory" not in skip:
        report["memory"] = memory(report["artifacts"], a.threads, tuple(a.memory_inputs.split(",")))
        print("## Peak memory of tiled x2 upscaling (VmHWM, fresh process per row)\n")
        print("'growth' = peak - RSS after load and one warm-up tile - image arrays (input + output): should stay "
              "flat.\n")
        print("| row | input | peak | after load | image arrays | growth |\n|---|---|---|---|---|---|")
        for r in report["memory"]:
            if "error" in r:
                print(f"| {r['row']} | {r['input']} | error: {r['error']} | | | |")
                continue
            mib = lambda v: f"{v / 2**20:.0f} MiB"  # noqa: E731
            print(f"| {r['row']} | {r['input']} | {mib(r['peak'])} | {mib(r['before'])} | {mib(r['arrays'])} | "
                  f"{mib(r['peak'] - r['before'] - r['arrays'])} |")
    edgevit.io.write_json(Path(a.out or work) / "sr_bench.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
