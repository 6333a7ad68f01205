"""``edgevit export`` for EfficientViT-SAM: one folder with three artifacts tied by a top-level manifest.

Layout of ``out``::

    manifest.json        model id, task, the components (relative paths, sha256), SAM contract and
                         prompt-slot rules, measured mask fidelity and the gate verdict, tool versions
    encoder/             model.<ext> + manifest.json: image float32 1×3×S×S → embeddings 1×256×64×64
    context/             model.<ext> + manifest.json (always fp32): embeddings → image_context 1×4096×384,
                         the decoder's per-image work (:class:`~edgevit.sam.rewrite.ImageContext`)
    decoder/             model.<ext> + manifest.json: embeddings, image_context, coords 1×P×2, labels 1×P
                         (float32: 1 fg, 0 bg, 2/3 box corners, -1 padding), mask_input 1×1×256×256,
                         has_mask_input 1 → masks 1×4×256×256, iou 1×4

Per image the pipeline runs encoder then context; per prompt only the decoder.

Steps: build the float model; rewrite encoder and decoder into export-friendly forms
(:mod:`edgevit.sam.rewrite`); lower the decoder (fp32 unless asked otherwise) and the encoder (int8
calibrated on the real photos of ``calib``); load both back and run them through :class:`Predictor` on the
eval instances (box prompt and first click); compare every mask with the float pipeline's
(:mod:`edgevit.sam.fidelity`); gate (int8 encoder falls back to keeping its most sensitive layers float);
write everything into a temporary folder next to ``out`` and rename it into place.
Labels are float32 inputs on every backend (the decoder only does arithmetic with them).
"""

from __future__ import annotations

import gc
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io, processing
from ..errors import EdgevitError
from ..export import GateError, _replace_dir, _tool_versions, gate_error, gated_fallback
from ..lowering.base import (ExportRequest, ExportResult, IOSpec, check_activations, check_keep_float, check_ranges,
                             get_backend)
from ..manifest import MANIFEST_NAME, Manifest, read_folder_manifest, sha256_file, verify_component, write_manifest
from ..quantize.calibration import load_image_set
from ..quantize.placement import check_placement
from .evaluate import open_sam_dataset
from .fidelity import FloatReference, MaskAgreement, MaskGate
from .predictor import Predictor
from .rewrite import decoder_float_regions, encoder_float_regions, friendly_decoder, friendly_encoder

CALIBRATION_IMAGES = 16
# Static int8 encoder placement per format (INT8_PLACEMENTS). L0 seed 0, 8 grabcut gate instances,
# benchmarks/sam_gate_sensitivity.py --placement: .pte all 98.79 (31.3 dB) vs weighted 99.18 (34.4 dB);
# onnx all 98.54 (30.2 dB) vs weighted 99.27 (35.8 dB). .tflite takes "all" only.
ENCODER_PLACEMENT = {"pte": "weighted", "onnx": "weighted"}
EVAL_INSTANCES = 8
KIND = "edgevit-sam-artifacts"
TOP_VERSION = 2  # 2: the context component (version-1 folders have no image_context; re-export them)
SLOT_RULES = ("{p} prompt slots (coords 1x{p}x2 in the {f}-longest-side frame, labels 1x{p}): points first "
              "(label 1 fg, 0 bg), then the box as two corners (labels 2, 3); unused slots have label -1 and "
              "coords 0. Without a box one -1 slot is SAM's 'not a point' token, so at most {np} points "
              "without a box and {nb} with one; extra -1 slots are masked out of attention.")


def _io(specs, n: int = 1) -> list[dict[str, Any]]:
    return [{"name": t.name, "shape": [n if d == "N" else d for d in t.shape], "dtype": t.dtype, "layout": t.layout}
            for t in specs]


def _specs(dicts: list[dict[str, Any]]) -> list[IOSpec]:
    return [IOSpec.from_dict(d) for d in dicts]


class SamArtifacts:
    """The three runners of an exported SAM folder; ``Predictor(artifacts)`` runs them (numpy in, numpy out).

    ``encode(x)``: float32 1×3×S×S → image state (embeddings 1×256×64×64, image_context 1×4096×384), the
    encoder then the context program. ``decode(emb, ctx, coords, labels, mask_input, has_mask_input)`` →
    (masks 1×4×256×256, iou 1×4). ``manifest``: the top-level manifest (dict).
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], encoder: Any, context: Any, decoder: Any,
                 contract: Any):
        self.folder, self.manifest, self.contract = folder, manifest, contract
        self.encoder, self.context, self.decoder = encoder, context, decoder
        self.decoder_inputs = tuple(s.name for s in contract.decoder_artifact_inputs)
        self.model_id = f"{manifest['model_id']} ({manifest['format']}/{manifest['components']['encoder']['precision']})"

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb = self.encoder.run({"image": x})["embeddings"]
        return emb, self.context.run({"embeddings": emb})["image_context"]

    def decode(self, *arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.decoder.run(dict(zip(self.decoder_inputs, arrays)))
        return out["masks"], out["iou"]

    def predictor_functions(self) -> tuple[Any, Any, Any]:
        """(encode, decode, contract) for :class:`~edgevit.sam.Predictor`."""
        return self.encode, self.decode, self.contract


def _contract_from(data: dict[str, Any], where: str):
    from ..models.efficientvit_sam import SamContract

    try:
        return SamContract(image_size=int(data["resize"]["size"]), mean=tuple(data["normalization"]["mean"]),
                           std=tuple(data["normalization"]["std"]), prompt_frame=int(data["prompt_frame"]),
                           max_points=int(data["max_points"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgevitError(f"{where}: SAM contract incomplete ({exc!r}); re-export") from None


def load_sam_artifacts(folder: str | Path, threads: int | None = None) -> SamArtifacts:
    """Load ``folder`` written by :func:`export_sam`: every artifact's sha256 is checked against the top-level
    manifest (and against its own manifest), then loaded as runners."""
    from ..runtime.base import load_artifact

    folder = Path(folder)
    path = folder / MANIFEST_NAME
    top = read_folder_manifest(folder, KIND, TOP_VERSION, "SAM artifact", "edgevit export")
    runners = {}
    for name in ("encoder", "context", "decoder"):
        comp = top.get("components", {}).get(name)
        if not comp:
            raise EdgevitError(f"{path}: component {name!r} missing; re-export")
        verify_component(folder, comp["artifact"], comp["sha256"], f"{name} artifact")
        runners[name] = load_artifact(folder / comp["path"], threads)
    return SamArtifacts(folder, top, runners["encoder"], runners["context"], runners["decoder"],
                        _contract_from(top["contract"], str(path)))


def _lower(backend, module, inputs, outputs, precision, calib, keep_float, path: Path, regions=(),
           activations: str = "static", ranges: str | None = None, placement: str | None = None) -> ExportResult:
    path.parent.mkdir(parents=True, exist_ok=True)
    static8 = precision == "int8" and activations == "static"
    request = ExportRequest.multi(module, _specs(inputs), [d["name"] for d in outputs], precision, path, calib,
                                  keep_float, regions, activations, ranges if precision == "int8" else None,
                                  placement if static8 else None)
    return backend.export(request)


def _component_manifest(model_id, format, precision, artifact: Path, io_specs, contract, result: ExportResult,
                        subs, extra: dict[str, Any], weights) -> Manifest:
    quant = {**(result.quantization or {}), **extra.pop("quantization", {})} if precision == "int8" else None
    return Manifest(model_id=model_id, format=format, precision=precision, artifact=artifact.name,
                    sha256=sha256_file(artifact), size_bytes=artifact.stat().st_size, inputs=io_specs[0],
                    outputs=io_specs[1], contract=contract, tool_versions=_tool_versions(result),
                    calibration=extra.pop("calibration", None), quantization=quant,
                    substitutions=[s.to_dict() for s in subs], delegation=result.delegation,
                    fidelity=extra.pop("fidelity", None), weights=str(weights) if weights else None)


def _decoder_calibration(model, contract, context, instances, images) -> list[tuple[np.ndarray, ...]]:
    """Real decoder inputs: float embeddings of real images (and their ``context``) with their box and
    first-click prompts."""
    predictor = Predictor(model, contract)
    samples = []
    for inst, image in zip(instances, images):
        predictor.set_image(image)
        emb = predictor.embeddings
        with torch.inference_mode():
            ctx = context(torch.from_numpy(emb)).numpy()
        samples.append((emb, ctx, *predictor.prompt_arrays(box=inst.box)))
        samples.append((emb, ctx, *predictor.prompt_arrays(points=[inst.first_click], labels=[1])))
    return samples


def export_sam(
    model_id: Any,
    format: str,
    precision: str,
    out: str | Path,
    weights: str | Path | None = None,
    calib: str | Path | None = None,
    eval_data: str | Path | None = None,
    eval_layout: str | None = None,
    gate: MaskGate | str | None = "default",
    keep_float: tuple[str, ...] = (),
    threads: int | None = None,
    progress: bool = True,
    eval_limit: int = EVAL_INSTANCES,
    decoder_precision: str = "fp32",
    activations: str = "static",
    ranges: str | None = None,
    placement: str | None = None,
) -> dict[str, Any]:
    """Export a SAM model to ``format`` (pte | tflite | onnx): encoder at ``precision``, decoder at
    ``decoder_precision``, into the folder ``out`` (module docstring). Returns the top-level manifest.

    ``model_id``: a registered ``efficientvit-sam-*`` id (``weights``: upstream checkpoint) or a SAM module
    with a ``contract``. ``calib``: folder of real photos (int8). ``eval_data``: instances in the grabcut50
    (``prompts``) or ``instances`` layout; the first ``eval_limit`` are the gate's. ``gate``: ``"default"``
    (mask mIoU vs float drops ≤ 1.0 point), a :class:`MaskGate`, or None to write even on failure.
    ``keep_float``: encoder module names to leave un-quantized. ``activations``: how the int8 components
    (encoder and/or decoder) quantize activations, ``"static"`` (calibrated ranges, every format) or
    ``"dynamic"`` (run-time ranges at conv / linear inputs, float32 between; .pte, and .tflite for the
    encoder; :class:`~edgevit.lowering.base.ExportRequest`). ``ranges``: static int8 range method of the int8
    components (:data:`~edgevit.quantize.ranges.RANGE_METHODS`; None: the format's default). ``placement``:
    where the static int8 components put their quantizers (:data:`~edgevit.quantize.placement.INT8_PLACEMENTS`;
    None: :data:`ENCODER_PLACEMENT` for the encoder, the format's default for the decoder).
    """
    from ..models import create_model

    backend = get_backend(format)
    for what, p in (("precision", precision), ("decoder precision", decoder_precision)):
        if p not in backend.precisions:
            raise EdgevitError(f"{format}: {what} {p!r} is not supported; choose one of {backend.precisions}")
    if activations != "static" and "int8" not in (precision, decoder_precision):
        raise EdgevitError(f"--activations {activations}: applies to int8 components (encoder {precision}, decoder "
                           f"{decoder_precision})")
    check_activations("int8", activations, format, backend.activation_modes)  # before any lowering
    if ranges is not None and activations != "static":
        raise EdgevitError(f"--ranges {ranges}: applies to static int8 activations, not {activations!r} ones")
    quantized = "int8" if "int8" in (precision, decoder_precision) else precision  # the components' int8, if any
    check_ranges(quantized, ranges, format, backend.range_methods)
    check_placement(quantized, activations, placement, format, backend.placements)
    enc_placement = placement or ENCODER_PLACEMENT.get(format)
    if activations == "dynamic" and decoder_precision == "int8" and format != "pte":
        raise EdgevitError(f"{format}: a dynamic int8 decoder needs declared float regions, which only .pte honours "
                           "with dynamic activations; use --decoder-precision fp32 or --format pte")
    model = create_model(model_id, weights=weights) if isinstance(model_id, str) else model_id.eval()
    name = model_id if isinstance(model_id, str) else getattr(model, "model_id", type(model).__name__)
    contract = getattr(model, "contract", None)
    if getattr(contract, "task", None) != "promptable-segmentation":
        raise EdgevitError(f"{name}: export_sam takes EfficientViT-SAM models (efficientvit-sam-*), not "
                           f"{getattr(contract, 'task', type(model).__name__)!r}")
    gate = MaskGate() if gate == "default" else gate
    keep_float = tuple(check_keep_float(model.image_encoder, keep_float))  # image-encoder names, before any work
    if eval_data is None:
        raise EdgevitError("SAM export measures mask agreement on prompted real images: pass --eval-data DIR "
                           "(grabcut50 layout: images, masks, prompts.json)")
    if eval_layout not in (None, "prompts", "instances"):
        raise EdgevitError(f"--eval-layout {eval_layout!r}: SAM eval data is 'prompts' (grabcut50) or 'instances'")
    if eval_layout == "prompts" and not (Path(eval_data) / "prompts.json").is_file():
        raise EdgevitError(f"{eval_data}: no prompts.json for --eval-layout prompts")
    instances = open_sam_dataset(eval_data)
    gate_set = instances[:eval_limit]
    needs_calib = "int8" in (precision, decoder_precision)
    if needs_calib and calib is None:
        raise EdgevitError("int8 export needs real calibration photos: pass --calib DIR (a folder of photos)")
    calib_set = load_image_set(calib, None, CALIBRATION_IMAGES) if needs_calib else None
    s = contract.image_size
    prep = lambda im: processing.sam_image_to_input(im, s, contract.mean, contract.std)[0]  # noqa: E731
    calib_inputs = [prep(im) for im in calib_set.images] if calib_set else None

    reference = FloatReference(Predictor(model), gate_set)
    example = torch.from_numpy(calib_inputs[0] if calib_inputs else prep(reference.images[0]))
    enc_activations = activations if precision == "int8" else "static"
    # NhwcIdentity works around ExecuTorch's layout pass; other formats get the plain rewrite
    enc_friendly, enc_subs = friendly_encoder(model.image_encoder, example,
                                              enc_activations if format == "pte" else "static")
    enc_regions = tuple(encoder_float_regions(enc_friendly, format)) if precision == "int8" else ()
    probe = Predictor(model)
    probe.set_image(reference.images[0])
    dec_example = (probe.embeddings, *probe.prompt_arrays(box=gate_set[0].box))
    dec_friendly, ctx_friendly, dec_subs = friendly_decoder(model.prompt_decoder,
                                                            tuple(torch.from_numpy(a) for a in dec_example))
    enc_io = (_io(contract.encoder_inputs), _io(contract.encoder_outputs))
    ctx_io = (_io(contract.encoder_outputs), _io(contract.context_outputs))
    dec_io = (_io(contract.decoder_artifact_inputs), _io(contract.decoder_outputs))
    contract_dict = contract.to_dict()

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    dec_path, enc_path = tmp / "decoder" / f"model{backend.extension}", tmp / "encoder" / f"model{backend.extension}"
    ctx_path = tmp / "context" / f"model{backend.extension}"
    runners: list[Any] = []
    try:
        if progress:
            print(f"export-sam: lowering the image context ({format}/fp32)", flush=True)
        ctx_result = _lower(backend, ctx_friendly, *ctx_io, "fp32", None, (), ctx_path)
        ctx_runner = backend.load(ctx_path, Manifest(name, format, "fp32", ctx_path.name, "", 0, *ctx_io,
                                                     contract_dict, {}), threads)
        dec_calib, dec_regions = None, ()
        if decoder_precision == "int8":
            dec_regions = tuple(decoder_float_regions(dec_friendly, activations))
            count = 1 if activations == "dynamic" else 8  # dynamic ranges: one sample only traces the graph
            extra = instances[eval_limit: eval_limit + count] or gate_set[:count]
            dec_calib = _decoder_calibration(model, contract, ctx_friendly, extra,
                                             [io.read_image(i.image) for i in extra])
        if progress:
            print(f"export-sam: lowering the prompt decoder ({format}/{decoder_precision})", flush=True)
        dec_result = _lower(backend, dec_friendly, *dec_io, decoder_precision, dec_calib, (), dec_path, dec_regions,
                            activations if decoder_precision == "int8" else "static", ranges, placement)
        dec_runner = backend.load(dec_path, Manifest(name, format, decoder_precision, dec_path.name, "", 0,
                                                     *dec_io, contract_dict, {}), threads)
        runners.append(dec_runner)
        live: dict[str, Any] = {}

        def attempt(kept_names: list[str]) -> tuple[Any, list[str]]:
            if progress:
                print(f"export-sam: lowering the image encoder ({format}/{precision}, {len(kept_names)} kept float)",
                      flush=True)
            live.clear()  # release the previous attempt's program before its file is rewritten
            runners[1:] = []
            gc.collect()
            live["result"] = _lower(backend, enc_friendly, *enc_io, precision, calib_inputs, kept_names, enc_path,
                                    enc_regions, enc_activations, ranges, enc_placement)
            enc_runner = backend.load(enc_path, Manifest(name, format, precision, enc_path.name, "", 0, *enc_io,
                                                         contract_dict, {}), threads)
            runners.append(enc_runner)
            live["pair"] = SamArtifacts(tmp, {"model_id": name, "format": format,
                                              "components": {"encoder": {"precision": precision}}},
                                        enc_runner, ctx_runner, dec_runner, contract)
            fid = reference.measure(Predictor(live["pair"]))
            if progress:
                print(f"export-sam: {fid.summary()}", flush=True)
            return fid, (gate or MaskGate()).failures(fid)

        fid, failures, kept, sensitivity = gated_fallback(attempt, enc_friendly, calib_inputs, keep_float,
                                                          gate is not None and precision == "int8", progress)
        enc_result = live["result"]
        if failures and gate is not None:
            raise gate_error(f"{name} {format}/{precision} (decoder {decoder_precision})", failures,
                             f"{len(gate_set)} instances of {eval_data}", sensitivity, kept)
        runners.clear()
        live.clear()
        del dec_runner, ctx_runner
        gc.collect()
        top = _write_folder(tmp, name, format, precision, decoder_precision, contract_dict, contract,
                            (enc_path, enc_io, enc_result, enc_subs, enc_regions), (ctx_path, ctx_io, ctx_result, []),
                            (dec_path, dec_io, dec_result, dec_subs, dec_regions), fid, gate or MaskGate(), failures,
                            calib_set, kept, sensitivity, eval_data, weights, activations)
        _replace_dir(tmp, out)
    finally:
        runners.clear()
        shutil.rmtree(tmp, ignore_errors=True)
    return top


def _write_folder(tmp: Path, name, format, precision, decoder_precision, contract_dict, contract, enc, ctx, dec,
                  fid: MaskAgreement, gate: MaskGate, failures, calib_set, kept, sensitivity, eval_data,
                  weights, activations: str) -> dict[str, Any]:
    verdict = "passed" if not failures else "failed, written with --no-gate: " + "; ".join(failures)
    fidelity = {**fid.to_dict(), "summary": fid.summary(), "data": str(eval_data),
                "prompts": "box (single-mask output) and first click (3 multimask outputs), per output index",
                "reference": "eager PyTorch fp32 through the same Predictor", "gate": gate.to_dict(),
                "gate_result": verdict}
    components: dict[str, Any] = {}
    for comp, (path, io_specs, result, subs, *regions), prec in (("encoder", enc, precision), ("context", ctx, "fp32"),
                                                                  ("decoder", dec, decoder_precision)):
        extra: dict[str, Any] = {"fidelity": {"measured_as": "the encoder+decoder pipeline, see ../manifest.json",
                                              "mask_miou_vs_float": round(fid.miou, 3), "gate_result": verdict}}
        if prec == "int8" and comp == "encoder":
            extra["calibration"] = ({"used": "no: dynamic activations take their ranges at run time; the first "
                                             "photo only traced the graph", **calib_set.describe()}
                                    if activations == "dynamic" else calib_set.describe())
            extra["quantization"] = {"kept_float": kept, "float_regions": [r.to_dict() for r in regions[0]],
                                     "sensitivity": [x.to_dict() for x in sensitivity] if sensitivity else None}
        if prec == "int8" and comp == "decoder":
            extra["calibration"] = {"samples": "float embeddings of eval photos after the gate's, with their box "
                                               "and first-click prompts"}
            if activations == "dynamic":
                extra["calibration"]["used"] = "no: dynamic activations take their ranges at run time"
            extra["quantization"] = {"float_regions": [r.to_dict() for r in regions[0]]}
        manifest = _component_manifest(name, format, prec, path, io_specs, {**contract_dict, "component": comp},
                                       result, subs, extra, weights)
        write_manifest(manifest, path.parent)
        components[comp] = {"path": comp, "artifact": f"{comp}/{path.name}", "sha256": manifest.sha256,
                            "size_bytes": manifest.size_bytes, "precision": prec,
                            "activations": activations if prec == "int8" else None,  # int8 components share it
                            "inputs": io_specs[0],
                            "outputs": io_specs[1], "delegation": result.delegation, "notes": result.notes}
    p = contract.max_points
    top = {
        "kind": KIND, "version": TOP_VERSION, "model_id": name, "task": contract.task, "format": format,
        "components": components,
        "contract": {**contract_dict, "prompt_slots": SLOT_RULES.format(p=p, f=contract.prompt_frame, np=p - 1,
                                                                        nb=p - 2),
                     "label_dtype": "float32 (values -1, 0, 1, 2, 3)"},
        "pipeline": "per image: encoder, then context (embeddings -> image_context); per prompt: decoder",
        "fidelity": fidelity, "tool_versions": _tool_versions(enc[2]) | {"decoder_" + k: v for k, v in
                                                                          dec[2].tool_versions.items()},
        "weights": str(weights) if weights else None,
    }
    io.write_json(tmp / MANIFEST_NAME, top)
    return top


__all__ = ["SamArtifacts", "export_sam", "load_sam_artifacts", "MaskGate", "GateError"]
