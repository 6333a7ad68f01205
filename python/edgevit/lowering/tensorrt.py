"""TensorRT engines built from an exported ONNX artifact, cached by what they depend on.

fp16 engines come from the fp32 ONNX (FP16 builder flag); int8 engines come only from the int8 QDQ ONNX
(explicit quantization: the scales are in the graph, no calibrator runs here) with FP16 also enabled, so
layers left in float (``keep_float``) may run in fp16. An engine is tied to one TensorRT version and one
GPU model, so the cache key is sha256(ONNX sha256, TensorRT version, GPU name, precision). No TensorRT
runner lives here: running an engine needs CUDA buffers and cannot be tested without a GPU.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from .. import io
from ..errors import EdgevitError
from ..manifest import MANIFEST_NAME, read_manifest, sha256_file, write_manifest

ENGINE_NAME = "model.engine"
SOURCE_PRECISION = {"fp16": "fp32", "int8": "int8"}  # engine precision -> required ONNX precision


def _toolchain(onnx_manifest_path: str | Path, precision: str):
    """(tensorrt module, GPU name), or the one-line 'not available' error."""
    missing = []
    try:
        import tensorrt as trt
    except ImportError:
        trt, missing = None, ["no Python module 'tensorrt'"]
    import torch

    if not torch.cuda.is_available():
        missing.append("no CUDA GPU visible to torch")
    if missing:
        raise EdgevitError(f"TensorRT is not available here ({'; '.join(missing)}); build the engine on the "
                           f"Jetson/GPU host with: edgevit trt-build {onnx_manifest_path} --precision {precision}")
    return trt, torch.cuda.get_device_name(0)


def cache_key(onnx_sha256: str, trt_version: str, gpu: str, precision: str) -> str:
    return hashlib.sha256("\n".join((onnx_sha256, trt_version, gpu, precision)).encode()).hexdigest()


def _build(trt, onnx_path: Path, precision: str) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if major < 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)).replace("\n", " ") for i in range(parser.num_errors))
        raise EdgevitError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it ({errors[:400]})")
    config = builder.create_builder_config()
    wanted = ("FP16", "INT8") if precision == "int8" else ("FP16",)
    for flag in wanted:  # TensorRT 11 removed these flags: QDQ graphs are strongly typed there
        if hasattr(trt.BuilderFlag, flag):
            config.set_flag(getattr(trt.BuilderFlag, flag))
        elif precision == "fp16":
            raise EdgevitError(f"TensorRT {trt.__version__} has no FP16 builder flag; convert the ONNX to "
                               "fp16 (ModelOpt AutoCast) and build that instead")
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise EdgevitError(f"{onnx_path}: TensorRT {trt.__version__} failed to build a {precision} engine "
                           "(see the TensorRT log above)")
    return bytes(engine)


def build_engine(onnx_manifest_path: str | Path, precision: str, cache_dir: str | Path) -> Path:
    """Build (or reuse) the TensorRT engine of an ONNX artifact; returns the engine's ``manifest.json``."""
    if precision not in SOURCE_PRECISION:
        raise EdgevitError(f"TensorRT engine precision must be one of {sorted(SOURCE_PRECISION)}, got {precision!r}")
    trt, gpu = _toolchain(onnx_manifest_path, precision)
    manifest, onnx_path = read_manifest(onnx_manifest_path)
    if manifest.format != "onnx" or manifest.precision != SOURCE_PRECISION[precision]:
        raise EdgevitError(f"{onnx_manifest_path}: a {precision} engine is built from the "
                           f"{SOURCE_PRECISION[precision]} ONNX export (int8: the QDQ graph), got a "
                           f"{manifest.precision} {manifest.format} artifact")
    key = cache_key(manifest.sha256, trt.__version__, gpu, precision)
    folder = Path(cache_dir) / f"{manifest.model_id}-{precision}-{key[:16]}"
    if (folder / MANIFEST_NAME).is_file():
        try:
            read_manifest(folder / MANIFEST_NAME)
            return folder / MANIFEST_NAME
        except EdgevitError:
            pass  # truncated or replaced: rebuild
    engine = _build(trt, onnx_path, precision)
    with io.atomic_write(folder / ENGINE_NAME) as f:
        f.write(engine)
    built = replace(
        manifest, format="engine", precision=precision, artifact=ENGINE_NAME, sha256=sha256_file(folder / ENGINE_NAME),
        size_bytes=len(engine), tool_versions={**manifest.tool_versions, "tensorrt": trt.__version__, "gpu": gpu},
        delegation={"builder": "tensorrt", "gpu": gpu, "source_onnx_sha256": manifest.sha256, "cache_key": key},
        fidelity=None,
    )
    return write_manifest(built, folder)  # written last and atomically: a cache entry is complete or absent
