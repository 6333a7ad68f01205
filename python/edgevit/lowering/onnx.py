"""ONNX backend: fp32 graphs from the torch.onnx dynamo exporter and symmetric int8 QDQ graphs for TensorRT.

fp32: ``torch.onnx.export(..., dynamo=True)`` at opset :data:`OPSET` with a static input shape, input
``image``, output ``logits``, checked with ``onnx.checker`` (full check). Batch norms are folded into the
convolutions by the exporter's optimizer.

int8: the fp32 graph quantized by ``onnxruntime.quantization.quantize_static`` in QDQ form, calibrated
(MinMax) on real pre-processed images: weights int8 symmetric per output channel, activations int8
symmetric per tensor (every zero point 0), biases left in float (TensorRT's ONNX parser rejects the int32
bias DequantizeLinear onnxruntime would otherwise insert; onnxruntime quantizes float biases itself when it
fuses a QDQ Conv). Products of two activations (``MatMul`` with no constant operand: the LiteMLA attention
``kᵀv`` and ``q(kᵀv)``) are excluded from quantization, so their outputs are never re-quantized (their
inputs may still arrive through a neighbour's Q/DQ pair): with int8 attention products the trained B0-VOC
checkpoint fell to 85% pixel agreement with float on VOC photos, and without them reached 98.3% (mIoU drop
0.0). That is TensorRT's explicit-quantization format: TensorRT builds int8 engines from it
without a calibrator, and onnxruntime runs it on CPU.

``keep_float`` module names map to ONNX nodes through what the exporter records on every node: the
``pkg.torch.onnx.name_scopes`` metadata lists the qualified names of the modules the op ran in
(outermost first, the fx node name last), and parameters keep their qualified names as initializer names
(``<module>.weight``). A node belongs to module ``m`` when ``m`` is one of its scopes or one of its
initializer inputs is a parameter of ``m`` or of a submodule; the second rule matters for convolutions
whose batch norm was folded in, which carry the batch norm's scopes but the convolution's weight.
Excluded nodes keep float weights and compute in float; a tensor on the boundary with a quantized
neighbour still passes through that neighbour's QuantizeLinear/DequantizeLinear pair.
"""

from __future__ import annotations

import ast
import logging
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import io
from ..errors import EdgevitError, require
from ..runtime.base import CheckedRunner
from .base import ExportRequest, ExportResult, check_calibration, check_keep_float

if TYPE_CHECKING:
    from ..manifest import Manifest

OPSET = 18  # the dynamo exporter's native opset: converting down drops the node metadata keep_float needs
INPUT_NAME, OUTPUT_NAME = "image", "logits"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_DROPPED_METADATA = ("pkg.torch.onnx.stack_trace",)  # absolute source paths of the exporting machine
_EXTRA = "onnx"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def tool_versions() -> dict[str, str]:
    import torch

    versions = {"torch": torch.__version__, "opset": str(OPSET)}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        versions[name] = require(name, _EXTRA, "ONNX export").__version__
    return versions


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notes on torchvision ops it skips and pytree deprecation warnings."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


# --- fp32 export -------------------------------------------------------------------------------
def export_fp32(model: Any, input_shape: tuple[int, int, int, int]) -> Any:
    """``model`` (eval mode) → checked ``onnx.ModelProto`` with static input ``image`` of ``input_shape``."""
    import torch

    require("onnx", _EXTRA, "ONNX export")
    require("onnxscript", _EXTRA, "ONNX export")
    example = torch.zeros(input_shape, dtype=torch.float32)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], external_data=False, verbose=False)
    except Exception as exc:
        raise EdgevitError(f"ONNX export of {type(model).__name__} failed ({type(exc).__name__}: "
                           f"{_first_line(exc)}); run export_friendly() on the model first") from exc
    proto = program.model_proto
    for node in proto.graph.node:
        keep = [p for p in node.metadata_props if p.key not in _DROPPED_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    check_graph(proto, input_shape)
    return proto


def check_graph(proto: Any, input_shape: Sequence[int]) -> None:
    """``onnx.checker`` (full) plus the I/O contract: one static float input ``image``, output ``logits``."""
    onnx = require("onnx", _EXTRA, "ONNX export")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise EdgevitError(f"exported ONNX graph fails onnx.checker ({_first_line(exc)})") from exc
    inputs, outputs = proto.graph.input, proto.graph.output
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise EdgevitError(f"exported ONNX graph has inputs {[i.name for i in inputs]} and outputs "
                           f"{[o.name for o in outputs]}; expected ['{INPUT_NAME}'] and ['{OUTPUT_NAME}']")
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    if dims != list(input_shape):
        raise EdgevitError(f"exported ONNX input '{INPUT_NAME}' has shape {dims}, expected static {list(input_shape)}")


# --- keep_float: modules -> ONNX nodes -----------------------------------------------------------
def node_scopes(node: Any) -> list[str]:
    """Qualified names of the modules ``node`` was traced in (outermost first), from the exporter's metadata."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [s for s in scopes[:-1] if s] if isinstance(scopes, list) else []  # last: the fx node name
    return []


def nodes_from_modules(proto: Any, modules: Iterable[str]) -> dict[str, list[str]]:
    """ONNX node names per module name (see the module docstring for the rule). Modules may map to no node."""
    initializers = {init.name for init in proto.graph.initializer}
    owners = []
    for node in proto.graph.node:
        params = [name for name in node.input if name in initializers]
        owners.append((node.name, set(node_scopes(node)), params))
    found: dict[str, list[str]] = {}
    for module in modules:
        prefix = module + "."
        found[module] = [name for name, scopes, params in owners
                         if module in scopes or any(p.startswith(prefix) for p in params)]
    return found


def activation_matmuls(proto: Any) -> list[str]:
    """Names of ``MatMul`` nodes whose operands are both computed (no initializer or Constant input)."""
    constants = {init.name for init in proto.graph.initializer}
    constants |= {out for n in proto.graph.node if n.op_type == "Constant" for out in n.output}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and not any(i in constants for i in n.input)]


def keep_float_nodes(model: Any, proto: Any, keep_float: Sequence[str]) -> dict[str, list[str]]:
    """:func:`nodes_from_modules` for ``keep_float`` names, each checked against ``model.named_modules()``."""
    check_keep_float(model, keep_float)
    if not any(node_scopes(n) for n in proto.graph.node):
        raise EdgevitError(f"keep_float: the exported graph records no module scopes ({SCOPES_KEY}); "
                           "this torch.onnx exporter cannot map module names to ONNX nodes")
    found = nodes_from_modules(proto, keep_float)
    for name, nodes in found.items():
        if not nodes:
            raise EdgevitError(f"keep_float: no ONNX node came from module {name!r} (it computes nothing "
                               "after export); name the module that holds the computation")
    return found


# --- int8 QDQ ----------------------------------------------------------------------------------
class _QuietPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # the quantizer's "consider pre-processing" advice
        return "pre-processing" not in record.getMessage()


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root, quiet = logging.getLogger(), _QuietPreprocessHint()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def quantize_qdq(fp32_path: str | Path, out_path: str | Path, calibration: Sequence[np.ndarray],
                 exclude_nodes: Sequence[str] = ()) -> list[str]:
    """Quantize the fp32 ONNX file at ``fp32_path`` to symmetric int8 QDQ at ``out_path`` (written atomically).

    ``exclude_nodes`` and every :func:`activation_matmuls` node stay float; returns the latter's names.
    """
    onnx = require("onnx", _EXTRA, "int8 ONNX quantization")
    quant = require("onnxruntime.quantization", _EXTRA, "int8 ONNX quantization")
    proto = onnx.load(str(fp32_path))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    data = check_calibration(calibration, dims, "ONNX")
    name = proto.graph.input[0].name
    float_matmuls = activation_matmuls(proto)
    excluded = sorted(set(exclude_nodes) | set(float_matmuls))

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(data)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {name: x}

    with tempfile.TemporaryDirectory(prefix="edgevit-qdq-") as tmp, _quiet_quantizer():
        out = Path(tmp) / "model.onnx"
        try:
            quant.quantize_static(
                str(fp32_path), str(out), Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=True,
                activation_type=quant.QuantType.QInt8, weight_type=quant.QuantType.QInt8,
                calibrate_method=quant.CalibrationMethod.MinMax, nodes_to_exclude=excluded or None,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
        except Exception as exc:
            raise EdgevitError(f"{fp32_path}: int8 QDQ quantization failed ({type(exc).__name__}: "
                               f"{_first_line(exc)})") from exc
        qproto = onnx.load(str(out))
        check_graph(qproto, dims)
        with io.atomic_write(out_path) as f:
            f.write(qproto.SerializeToString())
    return float_matmuls


def graph_summary(proto: Any) -> dict[str, Any]:
    """Op histogram and how many Conv/MatMul/Gemm nodes run int8 (weights or both operands from DequantizeLinear)."""
    nodes = list(proto.graph.node)
    ops = Counter(n.op_type for n in nodes)
    producer = {out: n.op_type for n in nodes for out in n.output}
    dq = [all(producer.get(i) == "DequantizeLinear" for i in n.input[:2]) for n in nodes]
    int8_conv = sum(q for n, q in zip(nodes, dq) if n.op_type == "Conv")
    int8_matmul = sum(q for n, q in zip(nodes, dq) if n.op_type in ("MatMul", "Gemm"))
    return {
        "runtime": "onnxruntime (CPUExecutionProvider); TensorRT via edgevit.lowering.tensorrt",
        "nodes": len(nodes),
        "op_histogram": dict(sorted(ops.items())),
        "quantize_linear": ops["QuantizeLinear"],
        "dequantize_linear": ops["DequantizeLinear"],
        "conv": ops["Conv"],
        "matmul": ops["MatMul"] + ops["Gemm"],
        "int8_conv": int8_conv,
        "int8_matmul": int8_matmul,
    }


# --- runner ------------------------------------------------------------------------------------
class OnnxRunner(CheckedRunner):
    """An ONNX artifact on onnxruntime's CPU execution provider (all graph optimizations on)."""

    def __init__(self, artifact: Path, manifest: Manifest, threads: int | None = None):
        ort = require("onnxruntime", _EXTRA, "running an ONNX artifact")
        if manifest.format != "onnx":
            raise EdgevitError(f"{artifact}: manifest format is {manifest.format!r}, not 'onnx'; "
                               "load it with edgevit.runtime.load_artifact")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise EdgevitError(f"threads must be a positive int or None, got {threads!r}")
        start = time.perf_counter()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EdgevitError(f"{artifact}: onnxruntime cannot load it ({_first_line(exc)}); re-export it") from exc
        super().__init__(manifest, Path(artifact), time.perf_counter() - start)
        self.threads = threads
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        want_in, want_out = manifest.inputs[0]["name"], manifest.outputs[0]["name"]
        shape = tuple(inputs[0].shape) if len(inputs) == 1 else None
        if len(inputs) != 1 or inputs[0].name != want_in or shape != self.input_shape \
                or inputs[0].type != "tensor(float)" or self.input_dtype != np.float32:
            got = [(i.name, i.type, i.shape) for i in inputs]
            raise EdgevitError(f"{artifact}: graph inputs {got} do not match the manifest's {want_in!r} "
                               f"{self.input_dtype} {self.input_shape}; re-export the artifact")
        if [o.name for o in outputs][:1] != [want_out]:
            raise EdgevitError(f"{artifact}: graph outputs {[o.name for o in outputs]} do not match the "
                               f"manifest's {want_out!r}; re-export the artifact")
        self.input_name, self.output_name = want_in, want_out

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]


# --- backend -----------------------------------------------------------------------------------
def _check_request(request: ExportRequest, precisions: tuple[str, ...]) -> None:
    if request.precision not in precisions:
        raise EdgevitError(f"the onnx backend exports {', '.join(precisions)}, not {request.precision!r}; "
                           "fp16 engines come from the fp32 ONNX via TensorRT (edgevit trt-build)")
    shape = request.input_shape
    if len(shape) != 4 or not all(isinstance(d, int | np.integer) and d > 0 for d in shape):
        raise EdgevitError(f"input_shape must be 4 positive ints (N, 3, H, W), got {shape!r}")
    if request.model.training:
        raise EdgevitError("the model is in training mode; call model.eval() before export")


class OnnxBackend:
    name = "onnx"
    extension = ".onnx"
    precisions = ("fp32", "int8")
    extra = _EXTRA

    def export(self, request: ExportRequest) -> ExportResult:
        _check_request(request, self.precisions)
        shape = tuple(int(d) for d in request.input_shape)
        versions = tool_versions()
        if request.precision == "int8":
            calibration = check_calibration(request.calibration, shape, "ONNX")
            check_keep_float(request.model, request.keep_float)
        proto = export_fp32(request.model, shape)
        notes = [f"torch.onnx dynamo exporter, opset {OPSET}, static input {INPUT_NAME} {list(shape)}, "
                 "batch norms folded into convolutions"]
        out = Path(request.out_path)
        if request.precision == "fp32":
            if request.keep_float:
                notes.append(f"keep_float {list(request.keep_float)} ignored: the fp32 graph is all float")
            with io.atomic_write(out) as f:
                f.write(proto.SerializeToString())
            return ExportResult(versions, graph_summary(proto), notes)

        kept = keep_float_nodes(request.model, proto, request.keep_float)
        excluded = sorted({n for nodes in kept.values() for n in nodes})
        with tempfile.TemporaryDirectory(prefix="edgevit-onnx-") as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            fp32.write_bytes(proto.SerializeToString())
            float_matmuls = quantize_qdq(fp32, out, calibration, excluded)
        onnx = require("onnx", _EXTRA, "ONNX export")
        summary = graph_summary(onnx.load(str(out)))
        quantization = {
            "scheme": "QDQ via onnxruntime.quantization.quantize_static (TensorRT explicit quantization)",
            "weights": "int8 symmetric, per output channel",
            "activations": "int8 symmetric, per tensor (zero point 0)",
            "biases": "float32 (not quantized)",
            "float_ops": "MatMul of two activations (LiteMLA attention products): output not re-quantized",
            "float_matmuls": len(float_matmuls),
            "calibration_method": "MinMax",
            "calibration_count": len(calibration),
            "kept_float_nodes": {name: nodes for name, nodes in kept.items()},  # module -> ONNX node names
            "excluded_nodes": len(set(excluded) | set(float_matmuls)),
            "int8_conv": summary["int8_conv"],
            "int8_matmul": summary["int8_matmul"],
        }
        if float_matmuls:
            notes.append(f"{len(float_matmuls)} activation x activation MatMul nodes (attention) left in float")
        if kept:
            notes.append(f"{sum(map(len, kept.values()))} ONNX nodes from {len(kept)} keep_float modules left in float")
        return ExportResult(versions, summary, notes, quantization)

    def load(self, artifact: Path, manifest: Manifest, threads: int | None = None) -> OnnxRunner:
        return OnnxRunner(Path(artifact), manifest, threads)
