"""LiteRT (TFLite) backend: ``.tflite`` flatbuffers from litert-torch, run by the LiteRT interpreter on CPU.

Every precision keeps the artifact's I/O as the PyTorch model's: float32 NCHW (``1×3×H×W`` image in,
``1×C×H/8×W/8`` logits out), int32 inputs as declared (int64 is refused: the converter makes such inputs
int32); the transposes to the runtime's NHWC live
inside the graph. Several inputs and outputs: litert-torch names the signature's inputs ``args_0``,
``args_1``… (``forward``'s positional arguments) and its outputs ``output_0``, ``output_1``… (the returned
tuple, in order); the runner maps the manifest's names onto them by position (recorded in the summary's
``signature``). The model is ``torch.export``-ed first and one
exact graph pass runs on every precision (:func:`zero_fill_pads`: a pad with a non-zero fill, LiteMLA's
row of ones, becomes a zero pad plus a constant border).

fp32
    ``litert_torch.convert``. The CPU runtime hands the graph to its default delegate, XNNPACK.
fp16
    The fp32 flatbuffer with the weights of every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED stored as
    float16 behind an explicit DEQUANTIZE (ai-edge-quantizer's ``float_casting`` weight-only recipe);
    biases and activations stay float32. This halves the weights, not the compute: on CPU the XNNPACK
    delegate converts each fp16 weight back to fp32 once, when it builds its graph, and computes in fp32
    (it would compute in fp16 only if told to force fp16 inference, which this runner never does).
int8, ``activations="dynamic"``
    The fp32 flatbuffer through ai-edge-quantizer's ``dynamic_wi8_afp32`` recipe (:func:`dynamic_int8`):
    int8 per-channel weights, float32 activations that the runtime quantizes on the fly at each quantized
    op; no calibration, no keep_float / float regions (every supported op is quantized).
int8
    Full-integer post-training quantization with litert-torch's PT2E flow: ``prepare_pt2e`` with a
    :class:`litert_torch.quantize.pt2e_quantizer.PT2EQuantizer` (weights int8 symmetric per output
    channel, activations int8 affine per tensor, histogram observers) → forward passes over the
    calibration images (real pre-processed photos) → ``convert_pt2e`` → ``litert_torch.convert`` with
    ``QuantConfig(pt2e_quantizer=...)`` (static QDQ conversion). Then two flatbuffer passes
    (:func:`postprocess_int8`):

    - float32 I/O: the converter folds each input's first QUANTIZE and each output's last DEQUANTIZE into
      int8 inputs and outputs. They are put back (QUANTIZE after a float32 input, DEQUANTIZE before a
      float32 output, for every input and output), so the artifact takes and returns float32 like the
      others; XNNPACK runs the conversions. Integer (int32 / int64) inputs are left as they are.
    - float activations (:data:`FLOAT_ISLAND_OPS`): the converter fuses DEQUANTIZE → hardswish / GELU →
      QUANTIZE into int8 HARD_SWISH / GELU, which the XNNPACK delegate does not take, so each one split
      the delegated graph (b0 at 512×1024: 26 partitions, 4.4× slower). Each becomes DEQUANTIZE →
      float32 op → QUANTIZE with the same scales, which XNNPACK takes (one partition).

    Convolutions, fully-connected (bicubic upsampling as matrices), residual and head additions,
    concatenations, zero pads, slices, reshapes and transposes run in int8; the linear-attention part
    (BATCH_MATMUL, ReLU, the ones-row addition, ``+ eps``, division) and the activations run in float32
    between DEQUANTIZE/QUANTIZE pairs. Additions and concatenations are annotated here: the stock PT2E
    "add" and "cat" annotators find their ops through ``source_fn_stack``, which ``torch.export`` no
    longer records, so residual additions would run in float32 and a concatenation would get the range
    of its first input only.

    ``keep_float`` is supported: nodes traced inside a named module (its ``nn_module_stack``) are not
    annotated, so they compute in float32 with float weights; the neighbours' QUANTIZE/DEQUANTIZE pairs
    form the boundary. (``PT2EQuantizer.set_module_name`` cannot do this: it rejects a ``None`` config and
    parses the ``nn_module_stack`` keys in a format this torch no longer produces.)

Delegation summary (:func:`graph_summary`): the artifact is loaded the way the runner loads it (default
XNNPACK delegate) and its nodes are read back: op histogram, float32 vs int8 compute ops, the number of
delegate partitions, the ops left to the builtin kernels, and a count of resize ops (must be zero: the
bicubic upsampling is constant matrices, never RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import io
from ..errors import EdgevitError, require
from ..quantize.placement import check_placement
from ..runtime.base import CheckedRunner
from .base import (ExportRequest, ExportResult, IOSpec, check_activations, check_calibration, check_dtypes,
                   check_keep_float, check_ranges)
from .float_region import FloatRegion, fx_filter, fx_float_nodes, fx_owner

if TYPE_CHECKING:
    from torch import nn

    from ..manifest import Manifest

_EXTRA = "litert"
# Ops whose presence would mean a resize was swapped in for the exact bicubic matrices.
RESIZE_OPS = ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR")
# Data-movement and conversion ops: not counted as float32 / int8 "compute".
_MOVEMENT_OPS = frozenset({"RESHAPE", "TRANSPOSE", "SLICE", "STRIDED_SLICE", "CONCATENATION", "PAD", "PADV2",
                           "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE", "DELEGATE"})
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# Single-input activations the converter fuses to int8 but XNNPACK only delegates in float32: in int8
# graphs each becomes DEQUANTIZE -> float32 op -> QUANTIZE (same scales), which XNNPACK takes.
FLOAT_ISLAND_OPS = ("HARD_SWISH", "GELU")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def tool_versions() -> dict[str, str]:
    """Versions of the toolchain (litert-torch, ai-edge-litert, torch and what they use for fp16/int8)."""
    require("litert_torch", _EXTRA, "LiteRT export")
    require("ai_edge_litert.interpreter", _EXTRA, "LiteRT export")
    import torch

    return {"litert-torch": _version("litert-torch"), "ai-edge-litert": _version("ai-edge-litert"),
            "ai-edge-quantizer": _version("ai-edge-quantizer"), "torchao": _version("torchao"),
            "torch": torch.__version__}


# --- request checks ----------------------------------------------------------------------------
def _check_request(request: ExportRequest) -> None:
    if request.precision not in LiteRTBackend.precisions:
        raise EdgevitError(f"tflite: precision {request.precision!r} is not supported; choose one of "
                           f"{LiteRTBackend.precisions}")
    check_dtypes(request, "tflite", LiteRTBackend.dtypes)
    check_activations(request.precision, request.activations, "tflite", LiteRTBackend.activation_modes)
    check_ranges(request.precision, request.ranges, "tflite", LiteRTBackend.range_methods)
    check_placement(request.precision, request.activations, request.placement, "tflite", LiteRTBackend.placements)
    if Path(request.out_path).suffix != LiteRTBackend.extension:
        raise EdgevitError(f"{request.out_path}: a LiteRT artifact must end in {LiteRTBackend.extension}")
    if request.precision != "int8" and request.keep_float:
        raise EdgevitError(f"tflite: keep_float applies to int8 only (precision is {request.precision})")


# --- conversion --------------------------------------------------------------------------------
@contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide litert-torch's per-stage progress lines unless the user set LITERT_TORCH_SHOW_PROGRESS."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    if key in os.environ:
        yield
        return
    os.environ[key] = "n"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _convert(model: Any, example: Any, what: str, **kwargs: Any) -> bytes:
    litert_torch = require("litert_torch", _EXTRA, "LiteRT export")
    try:
        with _quiet_progress():
            return bytes(litert_torch.convert(model, tuple(example), **kwargs).model_content())
    except EdgevitError:
        raise
    except Exception as exc:
        raise EdgevitError(f"LiteRT {what} conversion of {type(model).__name__} failed ({type(exc).__name__}: "
                           f"{_first_line(exc)}); run export_friendly() on the model first") from exc


def export_fp32(model: nn.Module, inputs: Sequence[IOSpec] | Sequence[int]) -> tuple[bytes, int]:
    """``model`` (eval mode, float32) → fp32 ``.tflite`` bytes with static inputs of ``inputs`` (specs, or one
    float32 input's shape), and the number of pads :func:`zero_fill_pads` rewrote."""
    import torch

    specs = tuple(inputs) if isinstance(inputs[0], IOSpec) else (IOSpec("image", tuple(inputs)),)
    example = tuple(torch.zeros(s.shape, dtype=getattr(torch, s.dtype)) for s in specs)
    graph, pads = _exported(model, example)
    return _convert(graph, example, "fp32"), pads


def fp16_weights(fp32: bytes) -> bytes:
    """fp32 ``.tflite`` → the same graph with CONV/DEPTHWISE_CONV/FULLY_CONNECTED weights stored as float16."""
    aeq = require("ai_edge_quantizer.quantizer", _EXTRA, "fp16 LiteRT export")
    qtyping = require("ai_edge_quantizer.qtyping", _EXTRA, "fp16 LiteRT export")
    quantizer = aeq.Quantizer(bytearray(fp32))
    config = qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
        compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True)
    for op in _WEIGHT_OPS:
        quantizer.update_quantization_recipe(regex=".*", operation_name=getattr(qtyping.TFLOperationName, op),
                                             op_config=config, algorithm_key=aeq.AlgorithmName.FLOAT_CASTING)
    try:
        result = quantizer.quantize(enable_progress_bar=False, enable_progress_report=False)
    except Exception as exc:
        raise EdgevitError(f"fp16 weight casting failed ({type(exc).__name__}: {_first_line(exc)})") from exc
    return bytes(result.quantized_model)


DYNAMIC_SCHEME = ("ai-edge-quantizer dynamic_wi8_afp32 on the fp32 flatbuffer: weights int8 symmetric per output "
                  "channel; activations float32, quantized to int8 on the fly (per tensor) at each quantized op "
                  "by the runtime")


def dynamic_int8(fp32: bytes) -> bytes:
    """fp32 ``.tflite`` → int8 weights with dynamically quantized activations (``dynamic_wi8_afp32``): L0 SAM
    encoder, session measurement: embeddings 38.8 dB SQNR against the fp32 flatbuffer, 159 vs 370 ms."""
    aeq = require("ai_edge_quantizer.quantizer", _EXTRA, "dynamic int8 LiteRT export")
    recipe = require("ai_edge_quantizer.recipe", _EXTRA, "dynamic int8 LiteRT export")
    quantizer = aeq.Quantizer(bytearray(fp32))
    quantizer.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    try:
        result = quantizer.quantize(enable_progress_bar=False, enable_progress_report=False)
    except Exception as exc:
        raise EdgevitError(f"dynamic int8 quantization failed ({type(exc).__name__}: {_first_line(exc)})") from exc
    return bytes(result.quantized_model)


# --- graph preparation ---------------------------------------------------------------------------
def _is_float_activation(node: Any) -> bool:
    import torch

    val = node.meta.get("val") if hasattr(node, "meta") else None
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and (
        val is None or (isinstance(val, torch.Tensor) and val.is_floating_point()))


def zero_fill_pads(gm: Any) -> int:
    """Rewrite every constant pad with a non-zero fill value ``c`` as a zero pad plus a constant that is
    ``c`` on the padded border and 0 elsewhere (broadcast along the unpadded dims). Exact: ``x + 0 = x`` and
    ``0 + c = c``. Returns the number of pads rewritten.

    Why: a non-zero fill lowers to PADV2, which the XNNPACK delegate does not take (fp32 and int8), and in
    int8 graphs the converter moves the DEQUANTIZE after the pad and quantizes the fill value with the
    input's scale, where it can saturate (LiteMLA's row of ones became 0.08-0.14). A zero pad lowers to PAD
    (0 is exact at any zero point) and the addition of the fill stays float32.
    """
    import torch
    import torch.nn.functional as F

    aten = torch.ops.aten
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        args, kwargs = list(node.args), node.kwargs
        if node.target == aten.pad.default:
            mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
            value = args[3] if len(args) > 3 else kwargs.get("value")
            if mode != "constant":
                continue
        elif node.target == aten.constant_pad_nd.default:
            value = args[2] if len(args) > 2 else kwargs.get("value", 0)
        else:
            continue
        x, pad = args[0], [int(p) for p in args[1]]
        val = x.meta.get("val")
        if not value or val is None or not val.is_floating_point() or any(p < 0 for p in pad):
            continue
        shape = list(val.shape)
        padded = {len(shape) - 1 - i // 2 for i, p in enumerate(pad) if p}
        fill = F.pad(torch.zeros([shape[d] if d in padded else 1 for d in range(len(shape))], dtype=val.dtype),
                     pad, value=float(value))
        name = f"_edgevit_pad_fill_{count}"
        while hasattr(gm, name):
            name += "_"
        gm.register_buffer(name, fill)
        with gm.graph.inserting_before(node):
            attr = gm.graph.get_attr(name)
            zero = gm.graph.call_function(aten.constant_pad_nd.default, (x, pad, 0.0))
            add = gm.graph.call_function(aten.add.Tensor, (zero, attr))
        attr.meta["val"] = fill
        for new in (zero, add):
            new.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace", "val")})
        node.replace_all_uses_with(add)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _exported(model: nn.Module, example: tuple[Any, ...]) -> tuple[Any, int]:
    """``torch.export`` graph module of ``model`` on the ``example`` inputs with :func:`zero_fill_pads` applied."""
    import torch

    try:
        gm = torch.export.export(model.eval(), tuple(example)).module()
    except Exception as exc:
        raise EdgevitError(f"torch.export of {type(model).__name__} failed ({type(exc).__name__}: "
                           f"{_first_line(exc)}); run export_friendly() on the model first") from exc
    n = zero_fill_pads(gm)
    for m in gm.modules():
        m.training = False  # an exported graph has no train mode; silences the converter's warning
    return gm, n


# --- int8: PT2E quantization -------------------------------------------------------------------
def _make_quantizer(keep_float: Sequence[str], float_regions: Sequence[FloatRegion] = ()) -> Any:
    """A PT2EQuantizer (per-channel symmetric int8 weights, per-tensor affine int8 activations) that also
    annotates activation+activation additions and concatenations (one shared range for all inputs), and
    leaves every node of the ``keep_float`` modules float.

    The stock "add" and "cat" annotators find their ops through ``source_fn_stack``, which torch.export no
    longer records, so without this every residual addition would compute in float32 between DEQUANTIZE
    and QUANTIZE, and the converter would give a concatenation the first input's range only.
    A tensor that a concatenation reads several times (an edge pad repeating one border slice) gets one
    spec: sharing a first input with itself made a cycle that ``prepare_pt2e`` recursed on forever
    (RecursionError in ``_unwrap_shared_qspec``). Nodes of declared ``float_regions`` are not annotated.
    """
    import torch

    pq = require("litert_torch.quantize.pt2e_quantizer", _EXTRA, "int8 LiteRT export")
    utils = require("litert_torch.quantize.pt2e_quantizer_utils", _EXTRA, "int8 LiteRT export")
    qz = require("torchao.quantization.pt2e.quantizer", _EXTRA, "int8 LiteRT export")
    aten = torch.ops.aten
    quantize_node = fx_filter(float_regions, keep_float)

    def annotated(node: Any) -> bool:
        ann = node.meta.get("quantization_annotation")
        return ann is not None and ann._annotated

    def annotate_adds_and_cats(gm: Any, config: Any) -> None:
        act = utils.get_input_act_qspec(config)
        out = utils.get_output_act_qspec(config)
        for node in gm.graph.nodes:
            if node.op != "call_function" or not quantize_node(node) or annotated(node):
                continue
            if node.target == aten.add.Tensor:
                a, b = node.args[:2]
                # activations only: a constant operand (the attention's "+ eps", a pad fill) stays float
                if _is_float_activation(a) and _is_float_activation(b):
                    node.meta["quantization_annotation"] = qz.QuantizationAnnotation(
                        input_qspec_map={a: act, b: act}, output_qspec=out, _annotated=True)
            elif node.target == aten.cat.default:
                inputs = list(dict.fromkeys(node.args[0]))  # once each: a repeated input shares with itself
                if inputs and all(_is_float_activation(x) for x in inputs):
                    shared = qz.SharedQuantizationSpec((inputs[0], node))
                    node.meta["quantization_annotation"] = qz.QuantizationAnnotation(
                        input_qspec_map={inputs[0]: act, **{x: shared for x in inputs[1:]}},
                        output_qspec=shared, _annotated=True)

    class EdgeQuantizer(pq.PT2EQuantizer):
        def annotate(self, model: Any) -> Any:
            config = self.global_config
            for op in self.STATIC_OPS:
                utils.OP_TO_ANNOTATOR[op](model, config, quantize_node)
            annotate_adds_and_cats(model, config)
            utils.propagate_annotation(model)
            return model

    return EdgeQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))


def quantize_int8(model: nn.Module, calibration: Sequence[tuple[np.ndarray, ...]],
                  keep_float: Sequence[str] = (), float_regions: Sequence[FloatRegion] = ()
                  ) -> tuple[bytes, dict[str, Any]]:
    """Full-integer int8 ``.tflite`` bytes (float32 I/O) calibrated on ``calibration`` (one tuple of input
    arrays per sample, as :func:`~edgevit.lowering.base.check_calibration` returns), and what was done."""
    import torch

    require("litert_torch", _EXTRA, "int8 LiteRT export")
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e", _EXTRA, "int8 LiteRT export")
    QuantConfig = require("litert_torch.quantize.quant_config", _EXTRA, "int8 LiteRT export").QuantConfig
    example = tuple(torch.from_numpy(x) for x in calibration[0])
    quantizer = _make_quantizer(keep_float, float_regions)
    graph, pads = _exported(model, example)
    region_nodes = sorted(fx_float_nodes(graph.graph, float_regions)) if float_regions else []
    try:
        prepared = pt2e.prepare_pt2e(graph, quantizer)
    except Exception as exc:
        raise EdgevitError(f"int8 PT2E preparation of {type(model).__name__} failed ({type(exc).__name__}: "
                           f"{_first_line(exc)})") from exc
    kept_nodes: Counter[str] = Counter()
    if keep_float:
        for node in prepared.graph.nodes:
            if node.op == "call_function" and (m := fx_owner(node, keep_float)) is not None:
                kept_nodes[m] += 1
        missing = [m for m in keep_float if not kept_nodes[m]]
        if missing:
            raise EdgevitError(f"keep_float: no graph node came from module(s) {missing} (they compute nothing "
                               "after export); name the module that holds the computation")
    with torch.no_grad():
        for xs in calibration:
            prepared(*(torch.from_numpy(x) for x in xs))
    converted = pt2e.convert_pt2e(prepared, fold_quantize=False)
    for m in converted.modules():
        m.training = False
    raw = _convert(converted, example, "int8", quant_config=QuantConfig(pt2e_quantizer=quantizer))
    content, edits = postprocess_int8(raw)
    details = {
        "scheme": "full-integer int8 post-training quantization (litert-torch PT2E, static QDQ conversion)",
        "weights": "int8 symmetric per output channel (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED)",
        "activations": "int8 affine per tensor, HistogramObserver ranges from the calibration images",
        "float_ops": "linear attention (BATCH_MATMUL, ReLU, ones-row and eps additions, division) and "
                     "hardswish / GELU, between DEQUANTIZE and QUANTIZE; see delegation.compute_ops",
        "io": "float32 inputs and outputs; QUANTIZE / DEQUANTIZE inside the graph",
        "calibration_images": len(calibration),  # samples (tuples) for several inputs
        "keep_float": list(keep_float),
        "keep_float_nodes": dict(kept_nodes),
        "float_region_nodes": region_nodes,  # fx nodes left un-annotated: float32 between DEQUANTIZE/QUANTIZE
        "graph_edits": {"zero_fill_pads": pads, **edits},
    }
    return content, details


# --- flatbuffer passes -------------------------------------------------------------------------
def _schema() -> tuple[Any, Any]:
    fb = require("ai_edge_litert.tools.flatbuffer_utils", _EXTRA, "LiteRT graph editing")
    return fb, require("ai_edge_litert.schema_py_generated", _EXTRA, "LiteRT graph editing")


def _builtin_name(schema: Any, code: Any) -> str | None:
    if code.customCode:
        return None
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    return next((k for k, v in vars(schema.BuiltinOperator).items() if v == builtin and not k.startswith("_")), None)


def _opcode(model: Any, schema: Any, builtin: int, version: int) -> int:
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and not code.customCode:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _float_tensor(schema: Any, like: Any, name: Any) -> Any:
    t = schema.TensorT()
    t.shape = list(like.shape)
    t.shapeSignature = list(like.shapeSignature) if like.shapeSignature is not None else None
    t.type = schema.TensorType.FLOAT32
    t.buffer = 0  # buffer 0 is the empty sentinel: a runtime tensor
    t.name = name
    t.hasRank = like.hasRank
    return t


def _append(tensors: list[Any], tensor: Any) -> int:
    tensors.append(tensor)
    return len(tensors) - 1


def _op(schema: Any, opcode: int, inputs: list[int], outputs: list[int]) -> Any:
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, inputs, outputs
    return op


def postprocess_int8(content: bytes) -> tuple[bytes, dict[str, int]]:
    """Float32 I/O and float32 activation islands for a converter-made int8 flatbuffer (module docstring)."""
    fb, schema = _schema()
    model = fb.read_model_from_bytearray(bytearray(content))
    if model.buffers[0].data is not None and len(model.buffers[0].data):
        raise EdgevitError("int8 LiteRT graph: buffer 0 is not the empty sentinel; cannot add runtime tensors")
    ops_enum, types = schema.BuiltinOperator, schema.TensorType
    q = _opcode(model, schema, ops_enum.QUANTIZE, 2)
    dq = _opcode(model, schema, ops_enum.DEQUANTIZE, 2)
    quantized = (types.INT8, types.UINT8, types.INT16)
    islands = {i: _builtin_name(schema, c) for i, c in enumerate(model.operatorCodes)
               if _builtin_name(schema, c) in FLOAT_ISLAND_OPS}
    edits = {"float_inputs": 0, "float_outputs": 0, **{f"{name.lower()}_to_float": 0 for name in FLOAT_ISLAND_OPS}}
    for index, sg in enumerate(model.subgraphs):
        tensors = sg.tensors
        new_ops = []
        for op in sg.operators:
            if (op.opcodeIndex in islands and tensors[op.inputs[0]].type in quantized
                    and tensors[op.outputs[0]].type in quantized):
                # same op (options kept, e.g. GELU's approximate flag) on float32 tensors
                a, b = op.inputs[0], op.outputs[0]
                fa = _append(tensors, _float_tensor(schema, tensors[a], (tensors[a].name or b"") + b"/float"))
                fo = _append(tensors, _float_tensor(schema, tensors[b], (tensors[b].name or b"") + b"/float"))
                op.inputs, op.outputs = [fa, *op.inputs[1:]], [fo]
                new_ops += [_op(schema, dq, [a], [fa]), op, _op(schema, q, [fo], [b])]
                edits[f"{islands[op.opcodeIndex].lower()}_to_float"] += 1
            else:
                new_ops.append(op)
        remap: dict[int, int] = {}
        front, back = [], []
        for pos, t in enumerate(sg.inputs):
            if tensors[t].type in quantized:
                f = _append(tensors, _float_tensor(schema, tensors[t], tensors[t].name))
                tensors[t].name = (tensors[t].name or b"") + b"/quantized"
                front.append(_op(schema, q, [f], [t]))
                sg.inputs[pos] = remap[t] = f
                edits["float_inputs"] += 1
        for pos, t in enumerate(sg.outputs):
            if tensors[t].type in quantized:
                f = _append(tensors, _float_tensor(schema, tensors[t], tensors[t].name))
                tensors[t].name = (tensors[t].name or b"") + b"/quantized"
                back.append(_op(schema, dq, [t], [f]))
                sg.outputs[pos] = remap[t] = f
                edits["float_outputs"] += 1
        sg.operators = front + new_ops + back
        for sig in model.signatureDefs or []:
            if sig.subgraphIndex == index:
                for tm in list(sig.inputs or []) + list(sig.outputs or []):
                    tm.tensorIndex = remap.get(tm.tensorIndex, tm.tensorIndex)
    return bytes(fb.convert_object_to_bytearray(model)), edits


# --- graph summary -----------------------------------------------------------------------------
def _interpreter(source: str | Path | bytes, threads: int) -> Any:
    lite = require("ai_edge_litert.interpreter", _EXTRA, "running a LiteRT artifact")
    if isinstance(source, bytes):
        return lite.Interpreter(model_content=source, num_threads=threads)
    return lite.Interpreter(model_path=str(source), num_threads=threads)


def _partition(interp: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(graph ops, delegate nodes, graph ops not taken by any delegate) of an allocated interpreter.

    Delegate nodes are appended after the model's own nodes; a delegate covers every node between its
    inputs and outputs (delegated partitions are convex), found by walking back from its outputs.
    """
    ops = interp._get_ops_details()
    graph = [o for o in ops if o["op_name"] != "DELEGATE"]
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    producer = {int(t): o["index"] for o in graph for t in o["outputs"]}
    covered: set[int] = set()
    for d in delegates:
        stop = {int(t) for t in d["inputs"]}
        stack, seen = [int(t) for t in d["outputs"]], set()
        while stack:
            t = stack.pop()
            if t in stop or t in seen or t not in producer:
                continue
            seen.add(t)
            n = producer[t]
            if n not in covered:
                covered.add(n)
                stack.extend(int(i) for i in ops[n]["inputs"] if i >= 0)
    return graph, delegates, [o for o in graph if o["index"] not in covered]


def _compute_dtype(op: dict[str, Any]) -> str:
    types = [np.dtype(t).name for t in op["operand_types"]]
    return types[0] if types else "none"


def _by_position(details: dict[str, dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Signature tensor details in ``forward`` order: ``args_0, args_1, …`` (numerically, not as strings)."""
    def key(name: str) -> tuple[int, int | str]:
        tail = name[len(prefix):]
        return (0, int(tail)) if name.startswith(prefix) and tail.isdigit() else (1, name)

    return [{**details[name], "signature_name": name} for name in sorted(details, key=key)]


def signature_io(interp: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Input and output tensor details of the model's signature, in ``forward`` order (litert-torch names
    them ``args_<i>`` and ``output_<i>``); a model without a signature gives the interpreter's own order."""
    if not interp.get_signature_list():
        return interp.get_input_details(), interp.get_output_details()
    runner = interp.get_signature_runner()
    return _by_position(runner.get_input_details(), "args_"), _by_position(runner.get_output_details(), "output_")


def graph_summary(source: str | Path | bytes, threads: int = 1) -> dict[str, Any]:
    """Op histogram, int8 vs float32 compute ops and the XNNPACK partitioning of a ``.tflite``."""
    interp = _interpreter(source, threads)
    interp.allocate_tensors()
    graph, delegates, left = _partition(interp)
    ins, outs = ([{**d, "signature_name": d.get("signature_name", d["name"])} for d in group]
                 for group in signature_io(interp))
    hist = Counter(o["op_name"] for o in graph)
    compute = Counter(f"{o['op_name']}:{_compute_dtype(o)}" for o in graph if o["op_name"] not in _MOVEMENT_OPS)
    by_dtype = Counter(_compute_dtype(o) for o in graph if o["op_name"] not in _MOVEMENT_OPS)
    return {
        "runtime": "LiteRT interpreter (ai-edge-litert), default XNNPACK delegate on CPU",
        "delegate": "XNNPACK",
        "nodes": len(graph),
        "delegated_nodes": len(graph) - len(left),
        "non_delegated_nodes": len(left),
        "partitions": len(delegates),
        "non_delegated_ops": dict(sorted(Counter(f"{o['op_name']}:{_compute_dtype(o)}" for o in left).items())),
        "op_histogram": dict(sorted(hist.items())),
        "compute_ops": dict(sorted(compute.items())),
        "int8_compute_ops": by_dtype.get("int8", 0),
        "float32_compute_ops": by_dtype.get("float32", 0),
        "quantize_ops": hist.get("QUANTIZE", 0),
        "dequantize_ops": hist.get("DEQUANTIZE", 0),
        "resize_ops": {op: hist.get(op, 0) for op in RESIZE_OPS},
        # dtypes of all inputs / all outputs (comma-joined when they differ); per tensor in "signature"
        "io_dtypes": {"input": _dtypes(ins), "output": _dtypes(outs)},
        "signature": {"inputs": {d["signature_name"]: np.dtype(d["dtype"]).name for d in ins},
                      "outputs": {d["signature_name"]: np.dtype(d["dtype"]).name for d in outs}},
    }


def _dtypes(details: list[dict[str, Any]]) -> str:
    return ",".join(dict.fromkeys(np.dtype(d["dtype"]).name for d in details))


# --- runner ------------------------------------------------------------------------------------
def _check_threads(threads: int | None) -> int:
    if threads is None:
        return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise EdgevitError(f"threads must be a positive int or None, got {threads!r}")
    return threads


class LiteRTRunner(CheckedRunner):
    """A ``.tflite`` artifact on the LiteRT interpreter (XNNPACK delegate), ``threads`` CPU threads
    (default: all cores). The manifest's inputs and outputs map by position onto the signature's ``args_<i>``
    and ``output_<i>``. Float32 in, float32 out; an artifact with quantized I/O (not produced by edgevit)
    is fed and read through its tensors' scale and zero point."""

    def __init__(self, artifact: Path, manifest: Manifest, threads: int | None = None):
        if manifest.format != LiteRTBackend.name:
            raise EdgevitError(f"{artifact}: manifest format is {manifest.format!r}, not 'tflite'; "
                               "load it with edgevit.runtime.load_artifact")
        self.threads = _check_threads(threads)
        start = time.perf_counter()
        try:
            interp = _interpreter(Path(artifact), self.threads)
            interp.allocate_tensors()
        except EdgevitError:
            raise
        except Exception as exc:
            raise EdgevitError(f"{artifact}: the LiteRT interpreter cannot load it ({_first_line(exc)}); "
                               "re-export the artifact") from exc
        super().__init__(manifest, Path(artifact), time.perf_counter() - start)
        self.interpreter = interp
        ins, outs = signature_io(interp)
        for kind, specs, details in (("input", self.inputs, ins), ("output", self.outputs, outs)):
            if specs and len(specs) != len(details):
                raise EdgevitError(f"{artifact}: the graph has {len(details)} {kind}s, the manifest lists "
                                   f"{len(specs)} ({', '.join(s.name for s in specs)}); re-export the artifact")
            for spec, d in zip(specs, details):
                if tuple(int(v) for v in d["shape"]) != spec.shape:
                    raise EdgevitError(f"{artifact}: graph {kind} {d.get('signature_name', d['name'])} ({spec.name}) "
                                       f"shape {tuple(int(v) for v in d['shape'])} differs from the manifest's "
                                       f"{spec.shape}; re-export the artifact")
        self._in, self._out = ins, outs

    @staticmethod
    def _affine(detail: dict[str, Any]) -> tuple[float, int]:
        scale, zero = detail["quantization"]
        if not scale:
            raise EdgevitError(f"tensor {detail['name']} is {np.dtype(detail['dtype']).name} without a scale")
        return float(scale), int(zero)

    def _run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        interp = self.interpreter
        for x, detail in zip(xs, self._in):
            dtype = np.dtype(detail["dtype"])
            if dtype != x.dtype and x.dtype == np.float32:  # quantized input (artifact not made by edgevit)
                scale, zero = self._affine(detail)
                info = np.iinfo(dtype)
                x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
            interp.set_tensor(detail["index"], x)
        interp.invoke()
        ys = []
        for detail in self._out:
            y = interp.get_tensor(detail["index"])
            if y.dtype in (np.int8, np.uint8, np.int16):  # quantized output: back to float32
                scale, zero = self._affine(detail)
                y = (y.astype(np.float32) - zero) * np.float32(scale)
            ys.append(y)
        return ys


# --- backend -----------------------------------------------------------------------------------
def _check_signature(signature: dict[str, dict[str, str]], request: ExportRequest) -> dict[str, str]:
    """Check the converted signature against the request (counts, input dtypes, no quantized outputs) and
    return the mapping ``{our name: signature name}`` (``image`` → ``args_0``, ``logits`` → ``output_0``)."""
    ins, outs = list(signature["inputs"].items()), list(signature["outputs"].items())
    if len(outs) != len(request.outputs):
        raise EdgevitError(f"tflite: the model returns {len(outs)} output(s) but the request names "
                           f"{len(request.outputs)} ({', '.join(request.outputs)}); name one per returned tensor")
    if len(ins) != len(request.inputs):
        raise EdgevitError(f"tflite: the converted graph has {len(ins)} inputs, the request {len(request.inputs)} "
                           "(an input the model does not use is dropped by the converter)")
    for spec, (name, dtype) in zip(request.inputs, ins):
        if dtype != spec.dtype:
            raise EdgevitError(f"tflite: converted graph input {name} ({spec.name}) is {dtype}, expected {spec.dtype}")
    for out, (name, dtype) in zip(request.outputs, outs):
        if dtype in ("int8", "uint8", "int16"):
            raise EdgevitError(f"tflite: converted graph output {name} ({out}) is {dtype}, expected float32 I/O")
    return {**{spec.name: n for spec, (n, _) in zip(request.inputs, ins)},
            **{out: n for out, (n, _) in zip(request.outputs, outs)}}


class LiteRTBackend:
    """``.tflite`` artifacts at fp32, fp16 (weights) and int8 (full integer, float32 I/O)."""

    name = "tflite"
    extension = ".tflite"
    precisions = ("fp32", "fp16", "int8")
    activation_modes = ("static", "dynamic")
    range_methods: tuple[str, ...] = ()  # the PT2E quantizer's HistogramObserver only
    placements = ("all",)
    dtypes = ("float32", "int32")  # the converter turns int64 inputs into int32 ones: declare them int32
    extra = _EXTRA

    def export(self, request: ExportRequest) -> ExportResult:
        _check_request(request)
        model = request.model.eval()
        dynamic = request.precision == "int8" and request.activations == "dynamic"
        if request.precision == "int8" and not dynamic:
            calibration = check_calibration(request.calibration, request.inputs, "LiteRT")
            keep = check_keep_float(model, request.keep_float)
        if dynamic and (request.keep_float or request.float_regions):
            raise EdgevitError("tflite: dynamic int8 activations quantize every supported op (ai-edge-quantizer "
                               "recipe); keep_float and float regions are not supported with them")
        versions = tool_versions()
        notes: list[str] = []
        quant: dict[str, Any] | None = None
        if dynamic:
            content, pads = export_fp32(model, request.inputs)
            content = dynamic_int8(content)
            quant = {"scheme": DYNAMIC_SCHEME, "activations": "dynamic", "calibration_images": 0}
            notes.append("int8 dynamic: int8 weights, float32 activations quantized on the fly by the runtime")
        elif request.precision == "int8":
            content, quant = quantize_int8(model, calibration, keep, request.float_regions)
            edits = quant["graph_edits"]
            pads = edits["zero_fill_pads"]
            notes.append("int8: float32 I/O, QUANTIZE/DEQUANTIZE inside the graph")
            islands = {op: edits[f"{op.lower()}_to_float"] for op in FLOAT_ISLAND_OPS
                       if edits.get(f"{op.lower()}_to_float")}
            if islands:
                notes.append(f"int8: {islands} activation(s) run in float32 between DEQUANTIZE/QUANTIZE (same "
                             "scales): XNNPACK does not delegate them in int8 and each would split the graph")
        else:
            content, pads = export_fp32(model, request.inputs)
            if request.precision == "fp16":
                content = fp16_weights(content)
                quant = {"scheme": "float16 weights (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) behind "
                                   "DEQUANTIZE; float32 activations and biases"}
                notes.append("fp16: weights stored as float16; the XNNPACK delegate on CPU converts them to "
                             "float32 when it builds its graph and computes in float32 (smaller file, same speed)")
        if pads:
            notes.append(f"{pads} constant pad(s) with a non-zero fill (LiteMLA's row of ones) lowered as a zero "
                         "pad plus a constant border (exact): PADV2 is not delegated by XNNPACK, and in int8 the "
                         "converter would quantize the fill with the input's scale")
        summary = graph_summary(content)
        if any(summary["resize_ops"].values()):
            raise EdgevitError(f"tflite: the converted graph contains {summary['resize_ops']}: a resize was "
                               "substituted for bicubic upsampling; run export_friendly() on the model first")
        summary["io_names"] = _check_signature(summary["signature"], request)
        if summary["non_delegated_nodes"]:
            notes.append(f"XNNPACK leaves {summary['non_delegated_nodes']} node(s) to the builtin kernels "
                         f"({summary['non_delegated_ops']}), splitting the graph into "
                         f"{summary['partitions']} delegated partitions")
        out = Path(request.out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with io.atomic_write(out) as f:
            f.write(content)
        return ExportResult(tool_versions=versions, delegation=summary, notes=notes, quantization=quant)

    def load(self, artifact: Path, manifest: Manifest, threads: int | None = None) -> LiteRTRunner:
        return LiteRTRunner(Path(artifact), manifest, threads)
