"""Static int8 activation ranges: the streaming |x| histogram against numpy on the pooled data, the ONNX range
collector against onnxruntime's own MinMax calibrator, percentile ranges in an exported QDQ graph, and the
checks that refuse a range method where it does not apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.errors import EdgevitError, UnknownKeyError
from edgevit.lowering.base import ExportRequest, check_ranges, get_backend
from edgevit.quantize.placement import INT8_PLACEMENTS, check_placement
from edgevit.quantize.ranges import RANGE_METHODS, AbsHistogram


def test_streaming_histogram_matches_pooled_percentile():
    rng = np.random.default_rng(0)
    # growing maxima force several pairwise merges; a heavy tail makes the percentile differ from the max
    parts = [rng.standard_normal(5000) * s for s in (0.01, 0.5, 3.0)] + [rng.standard_t(2, 20000) * 4]
    hist = AbsHistogram(bins=512)
    for p in parts:
        hist.add(p.reshape(10, -1))
    pooled = np.abs(np.concatenate(parts))
    assert hist.counts.sum() == pooled.size
    assert hist.max == pytest.approx(pooled.max())
    assert hist.width <= 2 * pooled.max() / 512
    for q in (50.0, 99.0, 99.99):
        want = np.percentile(pooled, q, method="inverted_cdf")  # the smallest x with CDF(x) ≥ q
        assert want - 1e-9 <= hist.percentile(q) <= want + hist.width + 1e-9, q
    assert hist.percentile(99.0) < 0.1 * pooled.max()  # the t tail's outliers are clipped
    assert hist.percentile(100.0) == pytest.approx(pooled.max())


def test_histogram_edge_cases():
    hist = AbsHistogram(bins=8)
    hist.add(np.zeros(10, np.float32))
    assert hist.counts[0] == 10 and hist.width == 0.0
    hist.add(np.array([-2.0, 1.0]))
    assert hist.counts.sum() == 12 and hist.max == 2.0 and hist.percentile(50) <= hist.width
    with pytest.raises(EdgevitError, match="NaN"):
        hist.add(np.array([np.nan]))
    with pytest.raises(EdgevitError, match="no values"):
        AbsHistogram().percentile(99)
    with pytest.raises(EdgevitError, match="even"):
        AbsHistogram(bins=7)


def test_range_method_registry_and_checks():
    assert RANGE_METHODS.names() == ["minmax", "percentile"]
    with pytest.raises(UnknownKeyError, match="percentile"):
        RANGE_METHODS.get("percentil")
    check_ranges("int8", None, "pte", ())  # the backend's default is always fine
    check_ranges("int8", "percentile", "onnx", ("minmax", "percentile"))
    with pytest.raises(EdgevitError, match="pte: activation ranges 'percentile' are not implemented"):
        check_ranges("int8", "percentile", "pte", ())
    with pytest.raises(EdgevitError, match="int8 only"):
        check_ranges("fp32", "minmax", "onnx", ("minmax", "percentile"))
    model = torch.nn.Conv2d(3, 4, 3).eval()
    with pytest.raises(EdgevitError, match="static int8"):
        ExportRequest(model, (1, 3, 8, 8), "int8", Path("m.pte"), activations="dynamic", ranges="minmax")


onnx = pytest.importorskip("onnx", reason="ONNX extra not installed (pip install 'edgevit[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="ONNX extra not installed (pip install 'edgevit[onnx]')")
from onnx import numpy_helper  # noqa: E402

from edgevit.lowering import onnx as lowering_onnx  # noqa: E402
from edgevit.lowering import onnx_ranges  # noqa: E402


class _Net(torch.nn.Module):
    """Conv → ReLU → conv with a residual add: a few calibration tensors of different sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(torch.relu(self.a(x)))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    torch.manual_seed(0)
    model = _Net().eval()
    tmp = tmp_path_factory.mktemp("ranges")
    fp32 = tmp / "fp32.onnx"
    fp32.write_bytes(lowering_onnx.export_fp32(model, (1, 3, 32, 32)).SerializeToString())
    rng = np.random.default_rng(1)
    samples = [(rng.standard_normal((1, 3, 32, 32)).astype(np.float32),) for _ in range(8)]
    samples[3][0][0, 1, 5, 7] = 40.0  # one outlier in 24576 input values: above the 99.99th percentile
    return {"model": model, "fp32": fp32, "samples": samples, "tmp": tmp}


def test_collector_minmax_equals_onnxruntime_minmax(net):
    ours = onnx_ranges.activation_ranges(net["fp32"], net["samples"], RANGE_METHODS.get("minmax"))
    calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")

    class Reader(calibrate.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(net["samples"])

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"image": x[0]}

    cal = calibrate.create_calibrator(net["fp32"], augmented_model_path=str(net["tmp"] / "aug.onnx"),
                                      calibrate_method=calibrate.CalibrationMethod.MinMax)
    cal.collect_data(Reader())
    theirs = {k: float(np.abs(np.concatenate([np.ravel(r) for r in v.range_value])).max())
              for k, v in cal.compute_data().items()}
    assert set(theirs) <= set(ours) and len(theirs) >= 4
    for name, t in theirs.items():
        assert ours[name] == pytest.approx(t, rel=1e-6), name
    # one tensor per group (a tiny memory budget) measures the same
    split = onnx_ranges.activation_ranges(net["fp32"], net["samples"], RANGE_METHODS.get("minmax"), budget_bytes=1)
    assert split == ours


def _activation_scales(path: Path) -> dict[str, float]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits and inits[n.input[1]].size == 1}


def test_percentile_ranges_reach_the_qdq_graph(net):
    paths = {}
    for method in ("minmax", "percentile"):
        paths[method] = net["tmp"] / f"{method}.onnx"
        lowering_onnx.quantize_qdq(net["fp32"], paths[method], net["samples"], ranges=method)
    mm, pc = _activation_scales(paths["minmax"]), _activation_scales(paths["percentile"])
    want = onnx_ranges.activation_ranges(net["fp32"], net["samples"], RANGE_METHODS.get("percentile"))
    assert mm.keys() == pc.keys() == {"image", "relu"}  # the two conv inputs
    for name, scale in pc.items():
        assert min(abs(scale * 127 / t - 1) for t in want.values() if t) < 1e-5, name
        assert scale <= mm[name] * (1 + 1e-6)
    assert pc["image"] < 0.2 * mm["image"]  # the outlier is clipped
    x = net["samples"][0][0]
    s = ort.InferenceSession(str(paths["percentile"]), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref = net["model"](torch.from_numpy(x)).numpy()
    got = s.run(None, {"image": x})[0]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.99


def test_backend_records_the_range_method(net):
    out = net["tmp"] / "req" / "model.onnx"
    request = ExportRequest(net["model"], (1, 3, 32, 32), "int8", out, [s[0] for s in net["samples"]],
                            ranges="percentile")
    result = get_backend("onnx").export(request)
    assert result.quantization["calibration_method"].startswith("Percentile: the 99.99th percentile")
    default = get_backend("onnx").export(ExportRequest(net["model"], (1, 3, 32, 32), "int8", out,
                                                       [s[0] for s in net["samples"]]))
    assert default.quantization["calibration_method"].startswith("MinMax")
    with pytest.raises(EdgevitError, match="pte: activation ranges"):
        get_backend("pte").export(ExportRequest(net["model"], (1, 3, 32, 32), "int8", out.with_suffix(".pte"),
                                                [s[0] for s in net["samples"]], ranges="percentile"))


def _readers_of_dequantized(path: Path) -> tuple[set[str], bool]:
    """Op types reading an activation DequantizeLinear, and whether any Conv output is quantized."""
    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    act_dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"
              and producer.get(n.input[0]) is not None and producer[n.input[0]].input[0] not in inits}
    readers = {n.op_type for n in graph.node for i in n.input if i in act_dq}
    conv_out_quantized = any(n.op_type == "QuantizeLinear" and getattr(producer.get(n.input[0]), "op_type", "") == "Conv"
                             for n in graph.node)
    return readers, conv_out_quantized


def test_qdq_placement_quantizes_weighted_inputs_only(net):
    """``weighted`` (the ONNX default): only Conv/MatMul inputs pass through a Q/DQ pair, the residual add reads
    the float image and the float conv output; onnxruntime's ``all`` rounds the add's operands too, and its
    output is further from float."""
    assert INT8_PLACEMENTS.names() == ["all", "weighted"]
    with pytest.raises(UnknownKeyError, match="weighted"):
        INT8_PLACEMENTS.get("weigthed")
    paths = {p: net["tmp"] / f"place-{p}.onnx" for p in ("weighted", "all")}
    for p, path in paths.items():
        lowering_onnx.quantize_qdq(net["fp32"], path, net["samples"], placement=p)
    readers, conv_out = _readers_of_dequantized(paths["weighted"])
    assert readers == {"Conv"} and not conv_out
    readers_all, conv_out_all = _readers_of_dequantized(paths["all"])
    assert "Add" in readers_all and conv_out_all
    errors = {}
    for p, path in paths.items():
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        err = []
        for (x,) in net["samples"]:
            with torch.inference_mode():
                ref = net["model"](torch.from_numpy(x)).numpy()
            err.append(np.abs(s.run(None, {"image": x})[0] - ref).mean())
        errors[p] = float(np.mean(err))
    assert errors["weighted"] < 0.5 * errors["all"], errors
    result = get_backend("onnx").export(ExportRequest(net["model"], (1, 3, 32, 32), "int8", net["tmp"] / "pl.onnx",
                                                      [s[0] for s in net["samples"]], placement="all"))
    assert result.quantization["placement"].startswith("all: onnxruntime's default")


def test_placement_is_checked_before_work():
    model = torch.nn.Conv2d(3, 4, 3).eval()
    with pytest.raises(EdgevitError, match="static int8 only"):
        ExportRequest(model, (1, 3, 8, 8), "fp32", Path("m.onnx"), placement="weighted")
    with pytest.raises(EdgevitError, match="static int8 only"):
        ExportRequest(model, (1, 3, 8, 8), "int8", Path("m.pte"), activations="dynamic", placement="all")
    with pytest.raises(UnknownKeyError, match="weighted"):
        ExportRequest(model, (1, 3, 8, 8), "int8", Path("m.onnx"), placement="weight")
    with pytest.raises(EdgevitError, match="tflite: int8 placement 'weighted' is not implemented"):
        check_placement("int8", "static", "weighted", "tflite", get_backend("tflite").placements)
    for fmt in ("pte", "onnx", "tflite"):  # the default is listed first
        assert get_backend(fmt).placements[0] == {"onnx": "weighted"}.get(fmt, "all")
