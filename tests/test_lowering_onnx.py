"""ONNX lowering: fp32 equals eager, int8 QDQ is symmetric and faithful on real photos, keep_float really
keeps modules in float, the runner validates its input, and TensorRT fails clearly where it is absent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgevit
from edgevit import processing
from edgevit.errors import EdgevitError, MissingDependencyError
from edgevit.io import read_image
from edgevit.lowering.base import ExportRequest, get_backend
from edgevit.lowering.rewrite import export_friendly
from edgevit.manifest import Manifest, read_manifest, sha256_file, write_manifest
from edgevit.models import get_model_entry
from edgevit.runtime import load_artifact

onnx = pytest.importorskip("onnx", reason="ONNX extra not installed (pip install 'edgevit[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="ONNX extra not installed (pip install 'edgevit[onnx]')")
from onnx import numpy_helper  # noqa: E402

from edgevit.lowering import onnx as lowering_onnx  # noqa: E402
from edgevit.lowering import tensorrt as lowering_trt  # noqa: E402

B0, B0_HW = "efficientvit-seg-b0-cityscapes", (64, 128)
L1, L1_HW = "efficientvit-seg-l1-ade20k", (64, 64)
N_CALIB = 10  # of the 14 VOC photos; the rest are held out
# Modules kept float in the int8 test: a whole attention block (LiteMLA context module with its residual
# add), the first conv (its batch norm is folded in, so its ONNX node carries the norm's scopes) and the
# classifier.
KEEP_FLOAT = ("backbone.stages.2.op_list.1.context_module", "backbone.input_stem.op_list.0.conv",
              "head.output_ops.0.op_list.1")
TRT_REASON = "TensorRT not installed (needs NVIDIA's package index and a CUDA GPU)"


def _photos(shared_data: Path, hw: tuple[int, int]) -> list[np.ndarray]:
    paths = sorted((shared_data / "seg" / "voc2012_val14" / "images").glob("*.png"))
    assert len(paths) == 14
    c = get_model_entry(B0).contract
    return [processing.image_to_input(read_image(p), processing.FixedSize(*hw), c.mean, c.std) for p in paths]


def _model(model_id: str, example: np.ndarray) -> nn.Module:
    torch.manual_seed(0)
    model = edgevit.create_model(model_id)
    new, _ = export_friendly(model, torch.from_numpy(example))
    new.model_id, new.contract = model.model_id, model.contract
    return new


def _eager(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def _write_manifest(folder: Path, model: nn.Module, result, precision: str, shape) -> Path:
    art = folder / "model.onnx"
    c = model.contract
    out_shape = [1, c.num_classes, shape[2] // 8, shape[3] // 8]
    manifest = Manifest(
        model_id=model.model_id, format="onnx", precision=precision, artifact=art.name, sha256=sha256_file(art),
        size_bytes=art.stat().st_size, contract=c.to_dict(), tool_versions=result.tool_versions,
        inputs=[{"name": "image", "shape": list(shape), "dtype": "float32", "layout": "NCHW"}],
        outputs=[{"name": "logits", "shape": out_shape, "dtype": "float32", "layout": "NCHW"}],
        quantization=result.quantization, delegation=result.delegation,
    )
    return write_manifest(manifest, folder)


def _export(tmp: Path, model: nn.Module, hw, precision: str, **kw) -> tuple[Path, object]:
    folder = tmp / f"{model.model_id}-{precision}"
    shape = (1, 3, *hw)
    result = get_backend("onnx").export(ExportRequest(model, shape, precision, folder / "model.onnx", **kw))
    return _write_manifest(folder, model, result, precision, shape), result


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def b0(shared_data, tmp_path_factory):
    photos = _photos(shared_data, B0_HW)
    model = _model(B0, photos[0])
    tmp = tmp_path_factory.mktemp("onnx")
    fp32, fp32_result = _export(tmp, model, B0_HW, "fp32")
    return {"model": model, "photos": photos, "tmp": tmp, "fp32": fp32, "fp32_result": fp32_result}


@pytest.fixture(scope="module")
def b0_int8(b0):
    """The backend's int8 export with KEEP_FLOAT, and a plain int8 quantization of the fp32 artifact."""
    calib = b0["photos"][:N_CALIB]
    kept, kept_result = _export(b0["tmp"], b0["model"], B0_HW, "int8", calibration=calib, keep_float=KEEP_FLOAT)
    plain = b0["tmp"] / "plain-int8" / "model.onnx"
    lowering_onnx.quantize_qdq(read_manifest(b0["fp32"])[1], plain, calib)
    return {"kept": kept, "kept_result": kept_result, "plain": plain}


def _graph(path: Path):
    return onnx.load(str(path)).graph


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# --- fp32 --------------------------------------------------------------------------------------
def test_fp32_graph_contract_and_no_resize(b0):
    manifest, art = read_manifest(b0["fp32"])
    proto = onnx.load(str(art))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}[""] >= 17
    assert [i.name for i in proto.graph.input] == ["image"] and [o.name for o in proto.graph.output] == ["logits"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, *B0_HW]
    ops = [n.op_type for n in proto.graph.node]
    resizes = [n for n in proto.graph.node if n.op_type == "Resize"]
    assert not [n for n in resizes if any(a.name == "mode" and a.s in (b"linear", b"nearest") for a in n.attribute)]
    assert not resizes, "bicubic upsampling should have become constant MatMuls"
    assert "BatchNormalization" not in ops
    r = b0["fp32_result"]
    assert set(r.tool_versions) >= {"torch", "onnx", "onnxruntime", "onnxscript", "opset"}
    assert r.delegation["conv"] == ops.count("Conv") > 0 and r.delegation["matmul"] >= 4  # 2 upsamples × 2
    assert r.delegation["quantize_linear"] == 0 and r.quantization is None
    assert not any(p.key == "pkg.torch.onnx.stack_trace" for n in proto.graph.node for p in n.metadata_props)


def test_fp32_matches_eager_b0(b0):
    runner = load_artifact(b0["fp32"], threads=2)
    assert runner.session.get_session_options().intra_op_num_threads == 2
    for x in b0["photos"][-2:]:
        ref, got = _eager(b0["model"], x), runner(x)
        assert got.shape == ref.shape == (1, 19, B0_HW[0] // 8, B0_HW[1] // 8) and got.dtype == np.float32
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert runner.last_seconds > 0 and runner.load_seconds > 0


def test_fp32_matches_eager_l_series(shared_data, tmp_path):
    photos = _photos(shared_data, L1_HW)
    model = _model(L1, photos[0])
    manifest, _ = _export(tmp_path, model, L1_HW, "fp32")
    ref, got = _eager(model, photos[-1]), load_artifact(manifest, threads=2)(photos[-1])
    assert got.shape == ref.shape == (1, 150, 8, 8)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


# --- int8 --------------------------------------------------------------------------------------
def _initializers(graph) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def test_int8_qdq_is_symmetric_and_per_channel(b0_int8):
    graph = _graph(b0_int8["plain"])
    inits = _initializers(graph)
    producer = {o: n for n in graph.node for o in n.output}
    qs = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qs
    for n in qs:
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero point {zp} is not symmetric int8"
    convs = [n for n in graph.node if n.op_type == "Conv"]
    for conv in convs:
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear", f"{conv.name}: weight is not quantized"
        w, scale = inits[dq.input[0]], inits[dq.input[1]]
        axis = {a.name: a.i for a in dq.attribute}.get("axis", 1)
        assert w.dtype == np.int8 and axis == 0 and scale.shape == (w.shape[0],), f"{conv.name}: not per-channel"
        assert producer[conv.input[0]].op_type == "DequantizeLinear", f"{conv.name}: activation not quantized"
        if len(conv.input) > 2:  # TensorRT takes no int32 bias DequantizeLinear: biases stay float
            assert inits[conv.input[2]].dtype == np.float32, f"{conv.name}: bias is quantized"
    assert np.abs(inits[producer[convs[0].input[1]].input[0]]).max() == 127  # symmetric: the max maps to 127


def test_int8_attention_products_stay_float(b0, b0_int8):
    """MatMuls of two activations (LiteMLA kᵀv and q·kᵀv) keep float outputs; weight MatMuls are int8."""
    fp32 = onnx.load(str(read_manifest(b0["fp32"])[1]))
    attention = set(lowering_onnx.activation_matmuls(fp32))
    matmuls = [n for n in fp32.graph.node if n.op_type == "MatMul"]
    assert len(attention) == 16 and len(matmuls) > len(attention)  # 4 B0 attention blocks x 2 branches x 2
    graph = _graph(b0_int8["plain"])
    producer = {o: n for n in graph.node for o in n.output}
    users: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n.op_type)
    found = {n.name for n in graph.node if n.op_type == "MatMul"}
    assert found == {n.name for n in matmuls}
    for n in graph.node:
        if n.op_type != "MatMul":
            continue
        requantized = "QuantizeLinear" in users.get(n.output[0], [])
        if n.name in attention:
            assert not requantized, n.name
        else:
            assert all(producer[i].op_type == "DequantizeLinear" for i in n.input), n.name


def test_int8_fidelity_on_held_out_photos(b0, b0_int8):
    float_s, int8_s = _session(read_manifest(b0["fp32"])[1]), _session(b0_int8["plain"])
    for x in b0["photos"][N_CALIB:]:
        ref, got = float_s.run(None, {"image": x})[0], int8_s.run(None, {"image": x})[0]
        assert _cosine(ref, got) > 0.99


def test_int8_export_keeps_float_modules(b0, b0_int8):
    result = b0_int8["kept_result"]
    q = result.quantization
    kept = q["kept_float_nodes"]
    fp32_proto = onnx.load(str(read_manifest(b0["fp32"])[1]))
    attention = set(lowering_onnx.activation_matmuls(fp32_proto))
    assert set(kept) == set(KEEP_FLOAT) and q["float_matmuls"] == len(attention)
    assert q["excluded_nodes"] == len({n for v in kept.values() for n in v} | attention)
    assert q["calibration_count"] == N_CALIB and "symmetric" in q["activations"]
    # The mapping on the fp32 graph: the first conv (BN folded in) reads the image; the classifier conv is
    # the one producing the logits; the attention block holds its convs, both attention MatMuls and its add.
    fp32 = _graph(read_manifest(b0["fp32"])[1])
    by_name = {n.name: n for n in fp32.node}
    assert [by_name[n].input[0] for n in kept[KEEP_FLOAT[1]]] == ["image"]
    assert [by_name[n].output[0] for n in kept[KEEP_FLOAT[2]]] == ["logits"]
    attn_ops = [by_name[n].op_type for n in kept[KEEP_FLOAT[0]]]
    # two attention products per branch (qkv and its 5x5 aggregation are attended separately)
    assert attn_ops.count("MatMul") == 4 and attn_ops.count("Conv") == 4 and attn_ops.count("Add") == 1

    manifest, art = read_manifest(b0_int8["kept"])
    graph = _graph(art)
    inits = _initializers(graph)
    producer = {o: n for n in graph.node for o in n.output}
    fp32_users: dict[str, set[str]] = {}
    for n in fp32.node:
        for i in n.input:
            fp32_users.setdefault(i, set()).add(n.name)
    excluded = {n for nodes in kept.values() for n in nodes}
    present = {n.name: n for n in graph.node}
    assert excluded <= set(present)
    interior = 0
    for name in excluded:
        node = present[name]
        if node.op_type in ("Conv", "MatMul"):  # float weights (constant operand not from an int8 initializer)
            src = producer.get(node.input[1])
            assert not (src is not None and src.op_type == "DequantizeLinear" and src.input[0] in inits), name
            if node.op_type == "Conv":
                assert inits[node.input[1]].dtype == np.float32
        for out in node.output:  # a tensor between two kept-float nodes gets no Q/DQ pair
            if fp32_users.get(out) and fp32_users[out] <= excluded:
                interior += 1
                assert not [n for n in graph.node if out in n.input and n.op_type == "QuantizeLinear"], out
    assert interior >= 15
    d = result.delegation
    excluded_convs = sum(present[n].op_type == "Conv" for n in excluded)
    assert excluded_convs == 6 and d["int8_conv"] == d["conv"] - excluded_convs
    assert d["quantize_linear"] > 0
    # still a faithful int8 model
    float_s, int8_s = _session(read_manifest(b0["fp32"])[1]), load_artifact(b0_int8["kept"], threads=2)
    x = b0["photos"][-1]
    assert _cosine(float_s.run(None, {"image": x})[0], int8_s(x)) > 0.99


def test_keep_float_names_are_checked(b0):
    proto = onnx.load(str(read_manifest(b0["fp32"])[1]))
    model = b0["model"]
    with pytest.raises(EdgevitError, match="did you mean 'backbone.input_stem.op_list.0.conv'"):
        lowering_onnx.keep_float_nodes(model, proto, ["backbone.input_stem.op_list.0.cnv"])
    model.unused = nn.Identity()
    try:
        with pytest.raises(EdgevitError, match="no ONNX node came from module 'unused'"):
            lowering_onnx.keep_float_nodes(model, proto, ["unused"])
    finally:
        del model.unused


def test_int8_request_errors(b0):
    backend, model, shape = get_backend("onnx"), b0["model"], (1, 3, *B0_HW)
    out = b0["tmp"] / "never.onnx"
    with pytest.raises(EdgevitError, match="needs calibration images"):
        backend.export(ExportRequest(model, shape, "int8", out))
    x = b0["photos"][0]
    with pytest.raises(EdgevitError, match=r"calibration\[1\]: expected a float32"):
        backend.export(ExportRequest(model, shape, "int8", out, calibration=[x, x[..., :8]]))
    with pytest.raises(EdgevitError, match="not 'fp16'"):
        backend.export(ExportRequest(model, shape, "fp16", out))
    with pytest.raises(EdgevitError, match="4 positive ints"):
        backend.export(ExportRequest(model, (3, 64, 128), "fp32", out))
    assert not out.exists()


# --- runner ------------------------------------------------------------------------------------
def test_runner_rejects_wrong_inputs(b0):
    runner = load_artifact(b0["fp32"], threads=1)
    x = b0["photos"][0]
    for bad in (x.astype(np.float64), x[:, :, :32], x.tolist()):
        with pytest.raises(EdgevitError, match=r"input must be float32 \(1, 3, 64, 128\)") as err:
            runner(bad)
        assert "\n" not in str(err.value)


def test_runner_checks_manifest_against_graph(b0, tmp_path):
    manifest, art = read_manifest(b0["fp32"])
    backend = get_backend("onnx")
    wrong = Manifest(**{**manifest.to_json(), "inputs": [{**manifest.inputs[0], "shape": [1, 3, 64, 64]}]})
    with pytest.raises(EdgevitError, match="do not match the manifest"):
        backend.load(art, wrong)
    with pytest.raises(EdgevitError, match="threads must be a positive int"):
        backend.load(art, manifest, threads=0)
    with pytest.raises(EdgevitError, match="not 'onnx'"):
        backend.load(art, Manifest(**{**manifest.to_json(), "format": "tflite"}))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    with pytest.raises(EdgevitError, match="onnxruntime cannot load it") as err:
        backend.load(garbage, manifest)
    assert "\n" not in str(err.value)


def test_runner_names_the_extra_when_onnxruntime_is_missing(b0, monkeypatch):
    manifest, art = read_manifest(b0["fp32"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgevit\[onnx\]'"):
        get_backend("onnx").load(art, manifest)


# --- TensorRT ----------------------------------------------------------------------------------
def test_build_engine_says_tensorrt_is_missing(b0, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # absent here anyway; forced so this runs everywhere
    with pytest.raises(EdgevitError) as err:
        lowering_trt.build_engine(b0["fp32"], "fp16", tmp_path / "engines")
    msg = str(err.value)
    assert msg.startswith("TensorRT is not available here (no Python module 'tensorrt'")
    assert f"edgevit trt-build {b0['fp32']} --precision fp16" in msg and "\n" not in msg
    assert not (tmp_path / "engines").exists()
    with pytest.raises(EdgevitError, match="must be one of"):
        lowering_trt.build_engine(b0["fp32"], "fp8", tmp_path / "engines")


def test_cache_key_depends_on_everything():
    base = ("a" * 64, "10.3.0", "Orin", "int8")
    keys = {lowering_trt.cache_key(*base)}
    for i, other in enumerate(("b" * 64, "10.4.0", "H200", "fp16")):
        keys.add(lowering_trt.cache_key(*base[:i], other, *base[i + 1:]))
    assert len(keys) == 5


def test_build_engine_with_tensorrt(b0, b0_int8, tmp_path):
    pytest.importorskip("tensorrt", reason=TRT_REASON)
    if not torch.cuda.is_available():
        pytest.skip(TRT_REASON)
    cache = tmp_path / "engines"
    for onnx_manifest, precision in ((b0["fp32"], "fp16"), (b0_int8["kept"], "int8")):
        path = lowering_trt.build_engine(onnx_manifest, precision, cache)
        manifest, engine = read_manifest(path)
        assert manifest.format == "engine" and manifest.precision == precision and engine.stat().st_size > 0
        mtime = engine.stat().st_mtime_ns
        assert lowering_trt.build_engine(onnx_manifest, precision, cache) == path  # cached
        assert engine.stat().st_mtime_ns == mtime
    with pytest.raises(EdgevitError, match="built from the int8 ONNX"):
        lowering_trt.build_engine(b0["fp32"], "int8", cache)


@pytest.mark.parametrize("hw", [(4, 4), (8, 8)], ids=["quadratic-order", "linear-order"])
def test_attention_with_empty_queries_stays_finite(tmp_path, hw):
    """Tokens whose ReLU query is all zero have a zero normaliser: eager gives 0 there (0 / (0 + eps)); the
    exported graph must too. The exporter folds "+ 1e-15" away, so the rewrite divides by max(den, eps)."""
    from edgevit.lowering.rewrite import BmmLiteMLA
    from edgevit.models.layers import LiteMLA, Style

    torch.manual_seed(0)
    mla = LiteMLA(32, 16, (5,), Style(act="hswish", bn_eps=1e-5)).eval()
    with torch.no_grad():
        mla.qkv.conv.weight[:16] = -mla.qkv.conv.weight[:16].abs()  # first head's q < 0 for a positive input
    x = torch.rand(1, 32, *hw) + 0.1
    model = nn.Sequential(BmmLiteMLA.from_module(mla)).eval()
    model.model_id, model.contract = B0, get_model_entry(B0).contract
    result = get_backend("onnx").export(ExportRequest(model, tuple(x.shape), "fp32", tmp_path / "m.onnx"))
    assert result.tool_versions["opset"] == str(lowering_onnx.OPSET)
    got = _session(tmp_path / "m.onnx").run(None, {"image": x.numpy()})[0]
    with torch.inference_mode():
        ref = mla(x).numpy()
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
