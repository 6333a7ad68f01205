"""ONNX backend: fp32 graphs from the torch.onnx dynamo exporter and symmetric int8 QDQ graphs for TensorRT.

fp32: ``torch.onnx.export(..., dynamo=True)`` at opset :data:`OPSET` with static input shapes, the graph's
inputs and outputs named as the request's (segmentation: input ``image``, output ``logits``; inputs may be
float32, int32 or int64), checked with ``onnx.checker`` (full check) and against every input spec. Batch norms are folded into the
convolutions by the exporter's optimizer.

int8: the fp32 graph quantized by ``onnxruntime.quantization.quantize_static`` in QDQ form, calibrated on real
pre-processed samples (one feed dict per sample, every input named): weights int8 symmetric per output channel,
activations int8 symmetric per tensor (every zero point 0), quantized only where they enter a Conv,
ConvTranspose, MatMul or Gemm (``placement`` ``weighted``, the default): no Q/DQ pair on those ops' outputs, and
every other reader of a quantized tensor (a residual add, GELU, a norm, a float MatMul) takes the float tensor
from before the pair. onnxruntime's default (``all``) quantizes inputs and outputs of every quantizable op and
lets each tensor's readers share one pair, so residual streams and activation-function internals are rounded
too; on the random-weight EfficientViT-SAM L0 encoder that cost 5.6 dB of embedding SQNR (30.2 → 35.8 dB with
``weighted``; mask mIoU vs float 98.54 → 99.27, the 99.0 gate passes), on the trained B0-VOC 98.37% → 98.85%
pixel agreement (MinMax) and on the trained SR t ×2 a Set5 drop of 0.046 → 0.031 dB. TensorRT fuses this
placement as int8 convolutions with float outputs (its documented "only the inputs are quantized" case).
Their ranges (``ranges``,
:data:`~edgevit.quantize.ranges.RANGE_METHODS`): ``minmax`` through onnxruntime's MinMax calibrator, or
``percentile`` (99.99th percentile of |x|) measured by :mod:`edgevit.lowering.onnx_ranges`' streaming histograms
and handed to the quantizer as its calibration cache (onnxruntime's own histogram calibrator keeps every
intermediate output of every sample: 24 GB and killed at one 480×640 SR tile). Tasks choose (``ExportTask.default_ranges``; their docstrings hold the measurements). Biases are
left in float (TensorRT's ONNX parser rejects the int32 bias DequantizeLinear onnxruntime would otherwise
insert; onnxruntime quantizes float biases itself when it fuses a QDQ Conv). Products of two activations
(``MatMul`` with no constant operand: the LiteMLA attention ``kᵀv`` and ``q(kᵀv)``) are excluded from quantization and read float inputs: with int8 attention products the trained B0-VOC
checkpoint fell to 85% pixel agreement with float on VOC photos, and without them reached 98.3% (mIoU drop
0.0). Softmax outputs (attention probabilities, e.g. the SAM decoder's) are not re-quantized for the same
reason (the two-input attention toy of tests/test_lowering_multiio.py: held-out cosine to float of its
scores 0.965 with int8 probabilities, 0.999 without). That is
TensorRT's explicit-quantization format: TensorRT builds int8 engines from it
without a calibrator, and onnxruntime runs it on CPU.

``keep_float`` module names map to ONNX nodes through what the exporter records on every node: the
``pkg.torch.onnx.name_scopes`` metadata lists the qualified names of the modules the op ran in
(outermost first, the fx node name last), and parameters keep their qualified names as initializer names
(``<module>.weight``). A node belongs to module ``m`` when ``m`` is one of its scopes or one of its
initializer inputs is a parameter of ``m`` or of a submodule; the second rule matters for convolutions
whose batch norm was folded in, which carry the batch norm's scopes but the convolution's weight.
Excluded nodes keep float weights and compute in float from float inputs.
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
from ..quantize.placement import INT8_PLACEMENTS, check_placement
from ..quantize.ranges import RANGE_METHODS
from ..runtime.base import CheckedRunner
from .base import (ExportRequest, ExportResult, IOSpec, check_activations, check_calibration, check_dtypes,
                   check_keep_float, check_ranges)
from .float_region import onnx_float_nodes, region_modules, unquantize_float_inputs
from .onnx_ranges import activation_ranges, write_range_cache

if TYPE_CHECKING:
    from ..manifest import Manifest

OPSET = 18  # the dynamo exporter's native opset: converting down drops the node metadata keep_float needs
INPUT_NAME, OUTPUT_NAME = "image", "logits"  # the single-image request's names
# ONNX TensorProto element type -> our dtype name (onnx.TensorProto.FLOAT, INT32, INT64)
_ELEM_TYPES = {1: "float32", 6: "int32", 7: "int64"}
_ORT_TYPES = {"float32": "tensor(float)", "int32": "tensor(int32)", "int64": "tensor(int64)"}
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
def _specs(inputs: Sequence[IOSpec] | Sequence[int]) -> tuple[IOSpec, ...]:
    """IOSpecs as given, or the single float32 ``image`` input of a shape."""
    return tuple(inputs) if isinstance(inputs[0], IOSpec) else (IOSpec(INPUT_NAME, tuple(inputs)),)


def export_fp32(model: Any, inputs: Sequence[IOSpec] | Sequence[int],
                outputs: Sequence[str] = (OUTPUT_NAME,)) -> Any:
    """``model`` (eval mode) → checked ``onnx.ModelProto`` with static ``inputs`` (specs, or the shape of one
    float32 ``image``) and outputs named ``outputs`` in ``forward``'s order."""
    import torch

    require("onnx", _EXTRA, "ONNX export")
    require("onnxscript", _EXTRA, "ONNX export")
    specs = _specs(inputs)
    example = tuple(torch.zeros(s.shape, dtype=getattr(torch, s.dtype)) for s in specs)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(model, example, dynamo=True, opset_version=OPSET,
                                        input_names=[s.name for s in specs], output_names=list(outputs),
                                        external_data=False, verbose=False)
    except Exception as exc:
        raise EdgevitError(f"ONNX export of {type(model).__name__} failed ({type(exc).__name__}: "
                           f"{_first_line(exc)}); run export_friendly() on the model first") from exc
    proto = program.model_proto
    for node in proto.graph.node:
        keep = [p for p in node.metadata_props if p.key not in _DROPPED_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    check_graph(proto, specs, outputs)
    return proto


def _dims(value: Any) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def graph_inputs(proto: Any) -> tuple[IOSpec, ...]:
    """The graph's inputs as specs (static shapes and float32 / int32 / int64 only, else an error)."""
    specs = []
    for value in proto.graph.input:
        dims, elem = _dims(value), value.type.tensor_type.elem_type
        if elem not in _ELEM_TYPES or not all(isinstance(d, int) and d > 0 for d in dims):
            raise EdgevitError(f"ONNX input {value.name!r} ({dims}, element type {elem}) is not a static "
                               f"{'/'.join(_ELEM_TYPES.values())} tensor; edgevit exports static shapes")
        specs.append(IOSpec(value.name, tuple(dims), _ELEM_TYPES[elem]))
    return tuple(specs)


def check_graph(proto: Any, inputs: Sequence[IOSpec] | Sequence[int],
                outputs: Sequence[str] = (OUTPUT_NAME,)) -> None:
    """``onnx.checker`` (full) plus the I/O contract: the static ``inputs`` (specs, or the shape of one float32
    ``image``) in order with their dtypes, and ``outputs`` by name in order."""
    onnx = require("onnx", _EXTRA, "ONNX export")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise EdgevitError(f"exported ONNX graph fails onnx.checker ({_first_line(exc)})") from exc
    specs = _specs(inputs)
    ins, outs = proto.graph.input, proto.graph.output
    want_in, want_out = [s.name for s in specs], list(outputs)
    if [i.name for i in ins] != want_in or [o.name for o in outs] != want_out:
        raise EdgevitError(f"exported ONNX graph has inputs {[i.name for i in ins]} and outputs "
                           f"{[o.name for o in outs]}; expected {want_in} and {want_out} (one output name per "
                           "returned tensor, every input used by the model)")
    for spec, value in zip(specs, ins):
        dims, elem = _dims(value), _ELEM_TYPES.get(value.type.tensor_type.elem_type, "other")
        if dims != list(spec.shape) or elem != spec.dtype:
            raise EdgevitError(f"exported ONNX input {spec.name!r} is {elem} {dims}, expected static "
                               f"{spec.dtype} {list(spec.shape)}")


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


def batched_weight_matmuls(proto: Any) -> list[str]:
    """Names of ``MatMul`` nodes with an initializer operand that is not a 2-D right-hand weight (e.g. per-head
    folded projections, H×K×N). With Q/DQ only at its inputs, onnxruntime's CPU provider fuses such a node into
    ``MatMulIntegerToFloat``, which takes a per-channel zero point for a 2-D right-hand weight only, and fails
    at run time ("b zero point is not valid")."""
    shapes = {init.name: len(init.dims) for init in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul"
            and any(i in shapes for i in n.input) and not (n.input[1] in shapes and shapes[n.input[1]] == 2)]


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
    """Drop the quantizer's pre-processing hint."""
    root, quiet = logging.getLogger(), _QuietPreprocessHint()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# placement -> (op types quantized, None: every op onnxruntime can; inputs only: no Q/DQ on their outputs and
# every other reader of a quantized tensor takes the float tensor; the manifest's note)
_QDQ_PLACEMENT = {
    "weighted": (WEIGHTED_OPS, True, "Q/DQ only at the inputs of Conv/ConvTranspose/MatMul/Gemm; their outputs, "
                 "residual adds, activation functions and norms read float tensors (TensorRT: int8 kernels with "
                 "float outputs)"),
    "all": (None, False, "onnxruntime's default: Q/DQ on the inputs and outputs of every quantizable op, each "
            "tensor's readers sharing one pair")}


def quantize_qdq(fp32_path: str | Path, out_path: str | Path, calibration: Sequence[Any],
                 exclude_nodes: Sequence[str] = (), float_nodes: Sequence[str] = (),
                 ranges: str = "minmax", placement: str = "weighted") -> list[str]:
    """Quantize the fp32 ONNX file at ``fp32_path`` to symmetric int8 QDQ at ``out_path`` (written atomically).

    ``calibration``: one tuple of arrays per sample in the graph's input order (a bare array for a single
    input). ``exclude_nodes``, every :func:`activation_matmuls` node, every Softmax and (``weighted``) every
    :func:`batched_weight_matmuls` node stay float; returns the
    :func:`activation_matmuls` names. ``float_nodes`` (declared float regions) stay float too and read
    their inputs from before any activation Q/DQ pair
    (:func:`~edgevit.lowering.float_region.unquantize_float_inputs`). ``ranges``: a
    :data:`~edgevit.quantize.ranges.RANGE_METHODS` key; ``minmax`` is onnxruntime's MinMax calibrator, the
    others are measured by :func:`~edgevit.lowering.onnx_ranges.activation_ranges` and handed to the quantizer
    as its calibration cache. ``placement``: an :data:`~edgevit.quantize.placement.INT8_PLACEMENTS` key.
    """
    method = RANGE_METHODS.get(ranges)
    op_types, inputs_only, _ = _QDQ_PLACEMENT[INT8_PLACEMENTS.get(placement).name]
    onnx = require("onnx", _EXTRA, "int8 ONNX quantization")
    quant = require("onnxruntime.quantization", _EXTRA, "int8 ONNX quantization")
    proto = onnx.load(str(fp32_path))
    specs = graph_inputs(proto)
    outputs = [o.name for o in proto.graph.output]
    data = check_calibration(calibration, specs, "ONNX")
    names = [s.name for s in specs]
    float_matmuls = activation_matmuls(proto)
    # Softmax outputs (attention probabilities) are not re-quantized either: onnxruntime gives them the fixed
    # range [0, 1], whose symmetric int8 step 1/127 rounds typical probabilities (about 1/tokens) to 0 or 1/127.
    softmax = [n.name for n in proto.graph.node if n.op_type == "Softmax"]
    batched = batched_weight_matmuls(proto) if inputs_only else []
    excluded = set(exclude_nodes) | set(float_nodes) | set(float_matmuls) | set(softmax) | set(batched)

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(data)

        def get_next(self) -> dict[str, np.ndarray] | None:
            xs = next(self.items, None)
            return None if xs is None else dict(zip(names, xs))

    with tempfile.TemporaryDirectory(prefix="edgevit-qdq-") as tmp, _quiet_quantizer():
        out = Path(tmp) / "model.onnx"
        cache = None  # MinMax: onnxruntime calibrates from the reader; other methods: our ranges as its cache
        if method.percentile is not None:
            cache = Path(tmp) / "ranges.json"
            write_range_cache(activation_ranges(fp32_path, data, method), cache)
        reader = Reader() if cache is None else None
        try:
            quant.quantize_static(
                str(fp32_path), str(out), reader, quant_format=quant.QuantFormat.QDQ, per_channel=True,
                activation_type=quant.QuantType.QInt8, weight_type=quant.QuantType.QInt8,
                calibrate_method=quant.CalibrationMethod.MinMax, nodes_to_exclude=sorted(excluded) or None,
                op_types_to_quantize=list(op_types) if op_types else None,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                               "OpTypesToExcludeOutputQuantization": list(op_types or ()) if inputs_only else []},
                calibration_cache_path=cache)
        except Exception as exc:
            raise EdgevitError(f"{fp32_path}: int8 QDQ quantization failed ({type(exc).__name__}: "
                               f"{_first_line(exc)})") from exc
        qproto = onnx.load(str(out))
        readers = set(float_nodes)
        if inputs_only:  # every node but the quantized weighted ops reads float
            readers |= {n.name for n in proto.graph.node if n.op_type not in op_types or n.name in excluded}
        if readers:
            unquantize_float_inputs(qproto, readers)
        check_graph(qproto, specs, outputs)
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
        have = [(i.name, i.type, tuple(i.shape)) for i in inputs]
        want = [(s.name, _ORT_TYPES[s.dtype], s.shape) for s in self.inputs]
        if have != want:
            raise EdgevitError(f"{artifact}: graph inputs {have} do not match the manifest's {want}; "
                               "re-export the artifact")
        names = [o.name for o in outputs]
        if self.outputs and names != list(self.output_names):
            raise EdgevitError(f"{artifact}: graph outputs {names} do not match the manifest's "
                               f"{list(self.output_names)}; re-export the artifact")
        self.input_name, self.output_name = self.input_names[0], names[0]
        self._output_order = names

    def _run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._output_order, dict(zip(self.input_names, xs)))


# --- backend -----------------------------------------------------------------------------------
def _check_request(request: ExportRequest, precisions: tuple[str, ...]) -> None:
    if request.precision not in precisions:
        raise EdgevitError(f"the onnx backend exports {', '.join(precisions)}, not {request.precision!r}; "
                           "fp16 engines come from the fp32 ONNX via TensorRT (edgevit trt-build)")
    check_dtypes(request, "onnx", OnnxBackend.dtypes)
    check_activations(request.precision, request.activations, "onnx", OnnxBackend.activation_modes)
    check_ranges(request.precision, request.ranges, "onnx", OnnxBackend.range_methods)
    check_placement(request.precision, request.activations, request.placement, "onnx", OnnxBackend.placements)
    if request.model.training:
        raise EdgevitError("the model is in training mode; call model.eval() before export")


class OnnxBackend:
    name = "onnx"
    extension = ".onnx"
    precisions = ("fp32", "int8")
    activation_modes = ("static",)
    range_methods = ("minmax", "percentile")
    default_ranges = "minmax"
    placements = ("weighted", "all")
    dtypes = ("float32", "int32", "int64")
    extra = _EXTRA

    def export(self, request: ExportRequest) -> ExportResult:
        _check_request(request, self.precisions)
        versions = tool_versions()
        if request.precision == "int8":
            calibration = check_calibration(request.calibration, request.inputs, "ONNX")
            check_keep_float(request.model, request.keep_float)
        proto = export_fp32(request.model, request.inputs, request.outputs)
        static = ", ".join(f"{s.name} {list(s.shape)}" for s in request.inputs)
        notes = [f"torch.onnx dynamo exporter, opset {OPSET}, static input {static}, "
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
        region_nodes = []
        if request.float_regions:
            modules = keep_float_nodes(request.model, proto, region_modules(request.float_regions))
            region_nodes = onnx_float_nodes(proto, request.float_regions, modules)
        with tempfile.TemporaryDirectory(prefix="edgevit-onnx-") as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            fp32.write_bytes(proto.SerializeToString())
            ranges = request.ranges or self.default_ranges
            placement = request.placement or self.placements[0]
            float_matmuls = quantize_qdq(fp32, out, calibration, excluded, region_nodes, ranges, placement)
        onnx = require("onnx", _EXTRA, "ONNX export")
        summary = graph_summary(onnx.load(str(out)))
        quantization = {
            "scheme": "QDQ via onnxruntime.quantization.quantize_static (TensorRT explicit quantization)",
            "weights": "int8 symmetric, per output channel",
            "activations": "int8 symmetric, per tensor (zero point 0)",
            "placement": f"{placement}: {_QDQ_PLACEMENT[placement][2]}",
            "biases": "float32 (not quantized)",
            "float_ops": "MatMul of two activations (LiteMLA attention products) and Softmax: outputs not "
                         "re-quantized",
            "float_matmuls": len(float_matmuls),
            "calibration_method": RANGE_METHODS.get(ranges).description,
            "calibration_count": len(calibration),
            "kept_float_nodes": {name: nodes for name, nodes in kept.items()},  # module -> ONNX node names
            "float_regions": [r.to_dict() for r in request.float_regions],
            "float_region_nodes": region_nodes,  # ONNX nodes in float32 reading un-quantized inputs
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
