"""``edgevit bench``: export (or reuse) every format × precision, then one table of size, accuracy and speed.

Accuracy: each artifact against the labels (when the data has them) and against the float model (pixel
agreement, mIoU drop, logits SQNR). Speed: p50/p90 latency after warm-up at a fixed thread count, load
time and peak RSS, each runner in its own process, eager fp32 PyTorch measured in the same run.
A format that fails is a row with its reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file

from .. import io
from ..errors import EdgevitError
from ..export import GateError, artifact_contract, export, parse_size
from ..fidelity import Gate, measure
from ..manifest import read_manifest
from ..models import count_macs, create_model
from ..quantize.calibration import load_image_set
from ..runtime import TorchRunner, load_artifact
from .report import render_html, render_markdown

# Measured on these machines (see ../shared/notes/toolchain.md): GEMM throughput per precision, ops/s.
ROOFLINE_OPS = {"fp32": 90e9, "fp16": 90e9, "int8": 280e9}


@dataclass
class BenchRow:
    format: str
    precision: str
    status: str
    size_mb: float | None = None
    miou: float | None = None
    agreement: float | None = None
    miou_drop: float | None = None
    sqnr_db: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    vs_eager: float | None = None
    vs_roofline: float | None = None
    load_s: float | None = None
    peak_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _time(args: list[str], threads: int, runs: int, sample: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "edgevit.harness.worker", "--threads", str(threads), "--runs", str(runs),
           "--input", str(sample), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgevitError(f"timing worker failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fill_timing(row: BenchRow, t: dict[str, Any], eager_p50: float | None, macs: int) -> None:
    lat = np.asarray(t["latencies"]) * 1e3
    row.p50_ms, row.p90_ms = float(np.percentile(lat, 50)), float(np.percentile(lat, 90))
    row.load_s, row.peak_mb = t["load_seconds"], t["peak_rss_mb"]
    if eager_p50:
        row.vs_eager = row.p50_ms / eager_p50
    row.vs_roofline = row.p50_ms / (2 * macs / ROOFLINE_OPS[row.precision] * 1e3)


def bench(model_id: str, data: str | Path, out: str | Path, weights: str | Path | None = None,
          layout: str | None = None, labelset: str | None = None, formats: tuple[str, ...] = ("pte", "tflite", "onnx"),
          precisions: tuple[str, ...] = ("fp32", "int8"), input_size: str | None = None, threads: int = 2,
          runs: int = 20, limit: int | None = None, reuse: bool = True, progress: bool = True) -> list[BenchRow]:
    """Run the benchmark; writes ``bench.json``, ``bench.md`` and ``bench.html`` into ``out``."""
    out = Path(out)
    if weights is None:  # random init, saved: every export and timing process must see the same weights
        weights = out / "random-init.safetensors"
        if not (reuse and weights.is_file()):
            out.mkdir(parents=True, exist_ok=True)
            state = create_model(model_id, labelset=labelset).state_dict()
            save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    model = create_model(model_id, weights=weights, labelset=labelset)
    size = parse_size(input_size) or model.contract.eval_size
    contract = artifact_contract(model.contract, size)
    images = load_image_set(data, layout, limit, contract.num_classes)
    macs = count_macs(model, (1, 3, *size))
    rows: list[BenchRow] = []
    out.mkdir(parents=True, exist_ok=True)
    sample = out / "timing-input.npy"  # every runner is timed on the same real pre-processed photo
    with io.atomic_write(sample) as f:
        np.save(f, contract.preprocess(images.images[0]))

    eager = BenchRow("eager", "fp32", "reference")
    fid = measure(TorchRunner(model), TorchRunner(model), contract, images)
    eager.miou, eager.agreement, eager.sqnr_db = fid.miou_float, 1.0, None
    eager_args = ["--eager", model_id, "--size", f"{size[0]}x{size[1]}"]
    eager_args += ["--weights", str(weights)] if weights else []
    eager_args += ["--labelset", labelset] if labelset else []
    _fill_timing(eager, _time(eager_args, threads, runs, sample), None, macs)
    eager.vs_eager = 1.0
    rows.append(eager)

    for fmt in formats:
        for prec in precisions:
            row = BenchRow(fmt, prec, "ok")
            folder = out / f"{fmt}-{prec}"
            try:
                if not (reuse and _reusable(folder, model_id, fmt, prec, size, weights)):
                    kw = dict(weights=weights, labelset=labelset, calib=data, calib_layout=layout, input_size=size,
                              threads=threads, progress=progress)
                    try:
                        export(model_id, fmt, prec, folder, **kw)
                    except GateError as exc:  # still measure its best attempt: the row says the gate failed
                        export(model_id, fmt, prec, folder, gate=None, keep_float=exc.keep_float, **kw)
                manifest, artifact = read_manifest(folder)
                runner = load_artifact(folder, threads=threads)
                f = measure(TorchRunner(model), runner, contract, images)
                row.size_mb = artifact.stat().st_size / 1e6
                row.miou, row.agreement, row.miou_drop = f.miou_artifact, f.agreement, f.miou_drop
                row.sqnr_db = f.sqnr_db if np.isfinite(f.sqnr_db) else None  # None: identical to float
                failures = Gate().failures(f)
                row.status = "ok" if not failures else "gate failed: " + "; ".join(failures)
                row.extra = {"delegation": manifest.delegation,
                             "kept_float": (manifest.quantization or {}).get("kept_float")}
                _fill_timing(row, _time(["--artifact", str(folder)], threads, runs, sample), eager.p50_ms, macs)
            except EdgevitError as exc:
                row.status = f"error: {exc}"
            except Exception as exc:  # a backend crash is a row, not the end of the benchmark
                row.status = f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            rows.append(row)

    meta = {"model": model_id, "weights": str(weights) if weights else None, "input": [1, 3, *size],
            "macs": macs, "threads": threads, "runs": runs, "data": images.describe(),
            "roofline_ops_per_s": ROOFLINE_OPS, "timing_input": f"{images.names[0]} (pre-processed)",
            "eager": "torch.set_flush_denormal(True), torch.inference_mode()"}
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(out / "bench.json", {"meta": meta, "rows": [asdict(r) for r in rows]})
    io.write_text(out / "bench.md", render_markdown(meta, rows))
    io.write_text(out / "bench.html", render_html(meta, rows))
    return rows


def _reusable(folder: Path, model_id: str, fmt: str, prec: str, size: tuple[int, int], weights) -> bool:
    try:
        m, _ = read_manifest(folder)
    except EdgevitError:
        return False
    return (m.model_id, m.format, m.precision, m.inputs[0]["shape"][2:], m.weights) == (
        model_id, fmt, prec, list(size), str(weights) if weights else None)
