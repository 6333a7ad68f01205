"""Activation ranges of an fp32 ONNX graph, measured on calibration samples with onnxruntime, for int8 QDQ.

Every float32 tensor that feeds or leaves a node (initializers excepted: onnxruntime's own choice of tensors
to calibrate) becomes an extra graph output of one onnxruntime session. Each sample is run once per group of
tensors whose static sizes fit ``budget_bytes`` (onnxruntime computes only what the requested outputs need,
and frees the rest), and every value is counted in that tensor's
:class:`~edgevit.quantize.ranges.AbsHistogram`. Peak memory is one group of one sample plus the histograms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgevitError, require
from ..quantize.ranges import AbsHistogram, RangeMethod

_EXTRA = "onnx"
BUDGET_BYTES = 1 << 30


def calibration_tensors(proto: Any) -> dict[str, int]:
    """Float32 node inputs/outputs that are not initializers → their size in bytes (static shapes inferred)."""
    onnx = require("onnx", _EXTRA, "int8 ONNX quantization")
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    infos = {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]}
    initializers = {init.name for init in graph.initializer}
    sizes: dict[str, int] = {}
    for node in graph.node:
        for name in [*node.input, *node.output]:
            info = infos.get(name)
            if not name or name in initializers or name in sizes or info is None:
                continue
            if info.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                continue
            dims = [d.dim_value for d in info.type.tensor_type.shape.dim]
            if not all(d > 0 for d in dims):
                raise EdgevitError(f"calibration tensor {name!r} has no static shape ({dims}); edgevit exports "
                                   "static shapes")
            sizes[name] = 4 * int(np.prod(dims))
    return sizes


def _groups(sizes: dict[str, int], budget: int) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return groups


def activation_ranges(fp32_path: str | Path, samples: Sequence[tuple[np.ndarray, ...]], method: RangeMethod,
                      budget_bytes: int = BUDGET_BYTES,
                      progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Symmetric threshold per calibration tensor of the fp32 graph at ``fp32_path``: ``method`` applied to
    the |x| of every element over ``samples`` (tuples in the graph's input order, already validated)."""
    onnx = require("onnx", _EXTRA, "int8 ONNX quantization")
    ort = require("onnxruntime", _EXTRA, "int8 ONNX quantization")
    proto = onnx.load(str(fp32_path))
    sizes = calibration_tensors(proto)
    present = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in sizes if n not in present)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    hists = {name: AbsHistogram() for name in sizes}
    groups = _groups(sizes, budget_bytes)
    for i, sample in enumerate(samples):
        feed = dict(zip(inputs, sample))
        for group in groups:
            for name, value in zip(group, session.run(group, feed)):
                hists[name].add(value)
        if progress:
            progress(i + 1, len(samples))
    return {name: method.threshold(h) for name, h in hists.items()}


def write_range_cache(thresholds: dict[str, float], path: str | Path) -> None:
    """``thresholds`` as onnxruntime's calibration cache (``quantize_static(calibration_cache_path=...)``, read
    as MinMax ranges ``[-t, t]``; the quantizer's symmetric scale is then ``t / 127``)."""
    calibrate = require("onnxruntime.quantization.calibrate", _EXTRA, "int8 ONNX quantization")
    data = {name: calibrate.TensorData(lowest=np.array(-t, np.float32), highest=np.array(t, np.float32))
            for name, t in thresholds.items()}
    calibrate.save_tensors_data(calibrate.TensorsData(calibrate.CalibrationMethod.MinMax, data), Path(path))
