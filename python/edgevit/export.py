"""``edgevit export``: PyTorch model → one gated artifact + manifest.

Steps: build the float model; specialise it to the export size with the declared substitutions; for int8,
calibrate on real images; lower with the backend; load the artifact back and measure its fidelity against
the float model on real images; apply the gate (int8 falls back to keeping the most sensitive layers in
float before giving up); write artifact and manifest atomically into ``out``.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import EdgevitError
from .lowering.base import ExportRequest, ExportResult, IOSpec, check_ranges, get_backend
from .lowering.float_region import FloatRegion
from .lowering.rewrite import export_friendly
from .manifest import Manifest, sha256_file, write_manifest
from .models import create_model
from .quantize.placement import check_placement
from .quantize.sensitivity import layer_sensitivity
from .runtime.base import TorchRunner
from .tasks import task_for
from .tasks.base import Fidelity, Gate

CALIBRATION_IMAGES = 16


class GateError(EdgevitError):
    """An artifact missed its accuracy budget against the float model.

    ``keep_float``: the modules the last fallback round kept in float (re-export with them and
    ``gate=None`` to write that best attempt anyway).
    """

    def __init__(self, message: str, keep_float: tuple[str, ...] = ()):
        super().__init__(message)
        self.keep_float = keep_float


MAX_FALLBACK_ROUNDS = 3


def parse_size(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """"512x1024" -> (512, 1024)."""
    if text is None or isinstance(text, tuple):
        return text
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EdgevitError(f"--input-size {text!r}: expected HxW, e.g. 512x1024") from None
    return h, w


def artifact_contract(contract: Any, size: tuple[int, int] | None) -> Any:
    """The model's contract specialised to the artifact's fixed input size (artifacts have static shapes)."""
    return task_for(contract).artifact_contract(contract, size)


def _tool_versions(result: ExportResult) -> dict[str, str]:
    from . import __version__

    return {"edgevit": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, **result.tool_versions}


def _lower(backend, model, io_specs, precision, calib: list[np.ndarray] | None, keep_float, tmp: Path,
           regions: tuple[FloatRegion, ...] = (), ranges: str | None = None,
           placement: str | None = None) -> ExportResult:
    inputs, outputs = io_specs
    request = ExportRequest.multi(model, [IOSpec.from_dict(d) for d in inputs], [d["name"] for d in outputs],
                                  precision, tmp / f"model{backend.extension}", calib, keep_float,
                                  regions if precision == "int8" else (), ranges=ranges, placement=placement)
    return backend.export(request)


def gated_fallback(attempt: Callable[[list[str]], tuple[Any, list[str]]], friendly: torch.nn.Module,
                   calib_inputs: list[Any] | None, keep_float: tuple[str, ...], retry: bool,
                   progress: bool) -> tuple[Any, list[str], list[dict[str, Any]], list[Any] | None]:
    """Lower-measure-retry: ``attempt(kept module names)`` lowers and measures, returning (fidelity, gate
    failures). While it fails and ``retry`` (an int8 export with a gate), the 2**round modules with the lowest
    emulated int8 SQNR (:func:`layer_sensitivity` on ``friendly``, computed once) are kept float and it runs
    again, at most :data:`MAX_FALLBACK_ROUNDS` more times. Returns (fidelity, failures, kept [{name, why}],
    sensitivity or None)."""
    kept: list[dict[str, Any]] = [{"name": n, "why": "requested"} for n in keep_float]
    sensitivity = None
    for round_ in range(MAX_FALLBACK_ROUNDS + 1):
        fid, failures = attempt([k["name"] for k in kept])
        if not failures or not retry or round_ == MAX_FALLBACK_ROUNDS:
            break
        if sensitivity is None:
            sensitivity = layer_sensitivity(friendly, calib_inputs[:8], calib_inputs[8:12] or calib_inputs[:2],
                                            progress=progress)
        worst = [s for s in sorted(sensitivity, key=lambda s: s.sqnr_db) if s.name not in {k["name"] for k in kept}]
        for s in worst[: 2**round_]:
            kept.append({"name": s.name, "why": f"gate failed ({'; '.join(failures)}); "
                                                f"emulated int8 SQNR {s.sqnr_db:.1f} dB is among the lowest"})
    return fid, failures, kept, sensitivity


def gate_error(what: str, failures: list[str], where: str, sensitivity: list[Any] | None,
               kept: list[dict[str, Any]]) -> GateError:
    """The one-line error of an artifact that still misses its budget after :func:`gated_fallback`."""
    worst = ", ".join(s.name for s in sorted(sensitivity or [], key=lambda s: s.sqnr_db)[:3])
    return GateError(f"{what}: misses its accuracy budget ({'; '.join(failures)}) on {where}; worst layers: "
                     f"{worst or 'n/a'}; use --keep-float or --no-gate", keep_float=tuple(k["name"] for k in kept))


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` so that ``dst`` is never half-written (old content replaced at the end)."""
    backup = None
    if dst.exists():
        backup = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, backup)
    os.replace(src, dst)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def export(
    model_id: str,
    format: str,
    precision: str,
    out: str | Path,
    weights: str | Path | None = None,
    labelset: str | None = None,
    calib: str | Path | None = None,
    calib_layout: str | None = None,
    eval_data: str | Path | None = None,
    eval_layout: str | None = None,
    input_size: str | tuple[int, int] | None = None,
    gate: Gate | str | None = "default",
    keep_float: tuple[str, ...] = (),
    threads: int | None = None,
    progress: bool = True,
    ranges: str | None = None,
    placement: str | None = None,
) -> Manifest:
    """Export ``model_id`` to ``format`` (pte | tflite | onnx) at ``precision`` into the folder ``out``.

    ``calib``: folder of real photos (``calib_layout`` to read labels too) — required for int8.
    ``eval_data``: labelled images for the gate (default: the calibration images, else ``calib`` as
    fidelity set). ``gate``: ``"default"`` (the task's budget, e.g. mIoU drop ≤ 1 point and 98% pixel
    agreement for segmentation), a task gate object, or ``None`` to write the artifact even when it misses
    the budget (``--no-gate``). ``ranges``: how static int8 activation ranges come from the calibration images
    (:data:`~edgevit.quantize.ranges.RANGE_METHODS`; ONNX takes ``minmax`` and ``percentile``; None: the task's
    measured choice, ``ExportTask.default_ranges``, e.g. ``percentile`` for segmentation ONNX, else the format's).
    ``placement``: where static int8 puts its quantizers (:data:`~edgevit.quantize.placement.INT8_PLACEMENTS`;
    None: the format's default, ONNX ``weighted``, .pte and .tflite ``all``). Returns the manifest written to
    ``out/manifest.json``.
    """
    backend = get_backend(format)
    if precision not in backend.precisions:
        raise EdgevitError(f"{format}: precision {precision!r} is not supported; choose one of {backend.precisions}")
    check_ranges(precision, ranges, format, backend.range_methods)
    check_placement(precision, "static", placement, format, backend.placements)
    model = create_model(model_id, weights=weights, labelset=labelset)
    task = task_for(model.contract)
    if precision == "int8" and ranges is None:
        ranges = task.default_ranges(format)
    contract = task.artifact_contract(model.contract, parse_size(input_size))
    if gate == "default":
        gate = task.default_gate()
    calib_set = task.load_images(calib, calib_layout, CALIBRATION_IMAGES, contract) if calib else None
    if precision == "int8" and calib_set is None:
        raise EdgevitError("int8 export needs real calibration images: pass --calib DIR (a folder of photos)")
    fid_set = task.load_images(eval_data, eval_layout, None, contract) if eval_data else calib_set
    if fid_set is None:
        raise EdgevitError("export measures fidelity on real images: pass --calib DIR or --eval-data DIR")
    calib_inputs = task.model_inputs(contract, calib_set) if calib_set else None
    example = torch.from_numpy((calib_inputs or task.model_inputs(contract, fid_set))[0])
    friendly, subs = export_friendly(model, example)
    inputs, outputs = task.io_specs(contract)
    # Optional task hook: parts int8 keeps in float32 by design (declared, measured, in the manifest).
    regions = tuple(getattr(task, "float_regions", lambda m, x: ())(friendly, example))

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        artifact = tmp / f"model{backend.extension}"
        lowered: dict[str, ExportResult] = {}

        def attempt(kept_names: list[str]) -> tuple[Fidelity, list[str]]:
            lowered["result"] = _lower(backend, friendly, (inputs, outputs), precision, calib_inputs, kept_names,
                                       tmp, regions, ranges, placement)
            provisional = Manifest(model_id, format, precision, artifact.name, "", artifact.stat().st_size, inputs,
                                   outputs, contract.to_dict(), {})
            fid = task.measure(TorchRunner(model), backend.load(artifact, provisional, threads), contract, fid_set)
            return fid, (gate or task.default_gate()).failures(fid)

        fid, failures, kept, sensitivity = gated_fallback(attempt, friendly, calib_inputs, keep_float,
                                                          gate is not None and precision == "int8", progress)
        result = lowered["result"]
        if failures and gate is not None:
            raise gate_error(f"{model_id} {format}/{precision}", failures, fid_set.source, sensitivity, kept)
        manifest = _final_manifest(model_id, format, precision, artifact, (inputs, outputs), contract, result, subs,
                                   fid, gate or task.default_gate(), failures, calib_set, fid_set, kept, sensitivity,
                                   weights, regions)
        write_manifest(manifest, tmp)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _final_manifest(model_id, format, precision, artifact: Path, io_specs, contract, result: ExportResult, subs,
                    fid: Fidelity, gate: Gate, failures, calib_set, fid_set, kept, sensitivity,
                    weights, regions: tuple[FloatRegion, ...] = ()) -> Manifest:
    inputs, outputs = io_specs
    quant = None
    if precision == "int8":
        quant = {**(result.quantization or {}), "kept_float": kept,
                 "float_regions": [r.to_dict() for r in regions],
                 "sensitivity": [s.to_dict() for s in sensitivity] if sensitivity else None}
    return Manifest(
        model_id=model_id, format=format, precision=precision, artifact=artifact.name,
        sha256=sha256_file(artifact), size_bytes=artifact.stat().st_size, inputs=inputs, outputs=outputs,
        contract=contract.to_dict(), tool_versions=_tool_versions(result),
        calibration=calib_set.describe() if calib_set is not None and precision == "int8" else None,
        quantization=quant, substitutions=[s.to_dict() for s in subs], delegation=result.delegation,
        fidelity={**fid.to_dict(), "summary": fid.summary(), "images": fid_set.describe(),
                  "reference": "eager PyTorch fp32", "gate": gate.to_dict(),
                  "gate_result": "passed" if not failures else "failed, written with --no-gate: " + "; ".join(failures),
                  "notes": result.notes},
        weights=str(weights) if weights else None,
    )
