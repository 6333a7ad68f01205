"""LiteRT lowering: fp32 equals eager, no resize op replaces the bicubic upsampling, fp16 is close and
smaller, int8 (calibrated on real photos) is faithful and fully delegated to XNNPACK with float32 I/O,
keep_float keeps a module float, the runner validates its input, and a missing toolchain fails clearly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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

pytest.importorskip("litert_torch", reason="LiteRT extra not installed (pip install 'edgevit[litert]')")
pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT extra not installed (pip install 'edgevit[litert]')")
from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.tools import flatbuffer_utils  # noqa: E402

from edgevit.lowering import litert  # noqa: E402

B0, B0_HW = "efficientvit-seg-b0-cityscapes", (64, 128)
L1, L1_HW = "efficientvit-seg-l1-ade20k", (64, 64)
N_CALIB = 13  # of the 14 VOC photos; the last one is held out
# Kept float in the int8 export: one 1×1 expansion conv (+ its folded batch norm and hardswish).
KEEP_FLOAT = ("backbone.stages.1.op_list.0.main.inverted_conv",)


def _photos(shared_data: Path, hw: tuple[int, int]) -> list[np.ndarray]:
    paths = sorted((shared_data / "seg" / "voc2012_val14" / "images").glob("*.png"))
    assert len(paths) == 14
    c = get_model_entry(B0).contract
    return [processing.image_to_input(read_image(p), processing.FixedSize(*hw), c.mean, c.std) for p in paths]


def _models(model_id: str, example: np.ndarray) -> tuple[nn.Module, nn.Module]:
    """(the registry model, its export_friendly copy), random weights."""
    torch.manual_seed(0)
    model = edgevit.create_model(model_id)
    new, _ = export_friendly(model, torch.from_numpy(example))
    new.model_id, new.contract = model.model_id, model.contract
    return model, new


def _eager(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def _export(tmp: Path, model: nn.Module, hw, precision: str, **kw):
    """Export through the registry's backend and write a manifest next to the artifact."""
    folder = tmp / f"{model.model_id}-{precision}"
    shape = (1, 3, *hw)
    art = folder / "model.tflite"
    result = get_backend("tflite").export(ExportRequest(model, shape, precision, art, **kw))
    c = model.contract
    manifest = Manifest(
        model_id=model.model_id, format="tflite", precision=precision, artifact=art.name, sha256=sha256_file(art),
        size_bytes=art.stat().st_size, contract=c.to_dict(), tool_versions=result.tool_versions,
        inputs=[{"name": "image", "shape": list(shape), "dtype": "float32", "layout": "NCHW"}],
        outputs=[{"name": "logits", "shape": [1, c.num_classes, hw[0] // 8, hw[1] // 8], "dtype": "float32",
                  "layout": "NCHW"}],
        quantization=result.quantization, delegation=result.delegation)
    return write_manifest(manifest, folder), result


def _opcodes(path: Path) -> set[str]:
    """Builtin op names in the flatbuffer, read with the schema (independent of the interpreter)."""
    model = flatbuffer_utils.read_model(str(path))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    used = {op.opcodeIndex for sg in model.subgraphs for op in sg.operators}
    return {names[max(model.operatorCodes[i].builtinCode, model.operatorCodes[i].deprecatedBuiltinCode)]
            for i in used}


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def b0(shared_data, tmp_path_factory):
    photos = _photos(shared_data, B0_HW)
    original, model = _models(B0, photos[0])
    tmp = tmp_path_factory.mktemp("litert")
    fp32, fp32_result = _export(tmp, model, B0_HW, "fp32")
    return {"original": original, "model": model, "photos": photos, "tmp": tmp, "fp32": fp32,
            "fp32_result": fp32_result}


@pytest.fixture(scope="module")
def b0_int8(b0):
    return _export(b0["tmp"], b0["model"], B0_HW, "int8", calibration=b0["photos"][:N_CALIB],
                   keep_float=KEEP_FLOAT)


# --- fp32 --------------------------------------------------------------------------------------
def test_backend_registered():
    backend = get_backend("tflite")
    assert isinstance(backend, litert.LiteRTBackend)
    assert (backend.name, backend.extension, backend.extra) == ("tflite", ".tflite", "litert")
    assert backend.precisions == ("fp32", "fp16", "int8")


def test_fp32_matches_eager_b0(b0):
    runner = load_artifact(b0["fp32"], threads=2)
    assert isinstance(runner, litert.LiteRTRunner) and runner.threads == 2
    for x in b0["photos"][-2:]:
        ref, got = _eager(b0["original"], x), runner(x)
        assert got.shape == ref.shape == (1, 19, B0_HW[0] // 8, B0_HW[1] // 8) and got.dtype == np.float32
        assert _rel_err(got, ref) <= 1e-4
    assert runner.last_seconds > 0 and runner.load_seconds > 0


def test_fp32_graph_has_no_resize_and_one_partition(b0):
    _, art = read_manifest(b0["fp32"])
    ops = _opcodes(art)
    assert not ops & {"RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"}, "bicubic must not become bilinear/nearest"
    assert "FULLY_CONNECTED" in ops  # the bicubic matrices
    assert "PADV2" not in ops  # LiteMLA's ones row is a zero pad + constant (XNNPACK takes no PADV2)
    r = b0["fp32_result"]
    d = r.delegation
    assert d["resize_ops"] == {"RESIZE_BILINEAR": 0, "RESIZE_NEAREST_NEIGHBOR": 0}
    assert d["partitions"] == 1 and d["non_delegated_nodes"] == 0 and d["delegated_nodes"] == d["nodes"]
    assert d["int8_compute_ops"] == 0 and d["io_dtypes"] == {"input": "float32", "output": "float32"}
    assert set(r.tool_versions) >= {"litert-torch", "ai-edge-litert", "torch"} and r.quantization is None


def test_fp32_matches_eager_l_series(shared_data, tmp_path):
    photos = _photos(shared_data, L1_HW)
    original, model = _models(L1, photos[0])
    manifest, result = _export(tmp_path, model, L1_HW, "fp32")
    ref, got = _eager(original, photos[-1]), load_artifact(manifest, threads=2)(photos[-1])
    assert got.shape == ref.shape == (1, 150, 8, 8)
    assert _rel_err(got, ref) <= 1e-4
    assert not _opcodes(read_manifest(manifest)[1]) & {"RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"}
    assert result.delegation["partitions"] == 1 and result.delegation["compute_ops"].get("GELU:float32")


# --- fp16 --------------------------------------------------------------------------------------
def test_fp16_close_and_smaller(b0, monkeypatch):
    # Reuse the fp32 conversion (the fp16 path is export_fp32 + fp16_weights): keeps the test fast.
    fp32_art = read_manifest(b0["fp32"])[1]
    monkeypatch.setattr(litert, "export_fp32", lambda model, shape: (fp32_art.read_bytes(), 0))
    manifest, result = _export(b0["tmp"], b0["model"], B0_HW, "fp16")
    art = read_manifest(manifest)[1]
    assert art.stat().st_size < 0.6 * fp32_art.stat().st_size
    assert result.delegation["partitions"] == 1 and result.delegation["dequantize_ops"] > 0
    assert "float16" in result.quantization["scheme"] and any("fp16" in n for n in result.notes)
    runner, ref_runner = load_artifact(manifest, threads=2), load_artifact(b0["fp32"], threads=2)
    for x in b0["photos"][-2:]:
        assert _rel_err(runner(x), ref_runner(x)) <= 1e-2


# --- int8 --------------------------------------------------------------------------------------
def test_int8_faithful_on_held_out_photo(b0, b0_int8):
    manifest, result = b0_int8
    runner = load_artifact(manifest, threads=2)
    x = b0["photos"][-1]  # not in the calibration set
    got, ref = runner(x), _eager(b0["original"], x)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert _cosine(got, ref) > 0.99
    q = result.quantization
    assert q["calibration_images"] == N_CALIB and "per output channel" in q["weights"]


def test_int8_graph_float_io_one_partition(b0_int8):
    manifest, result = b0_int8
    d = result.delegation
    assert d["io_dtypes"] == {"input": "float32", "output": "float32"}
    assert d["partitions"] == 1 and d["non_delegated_nodes"] == 0, d["non_delegated_ops"]
    ops = d["compute_ops"]
    assert ops["CONV_2D:int8"] > 30 and ops["DEPTHWISE_CONV_2D:int8"] > 10 and ops["FULLY_CONNECTED:int8"] == 4
    assert ops["ADD:int8"] >= 10  # residual and head additions quantized
    assert "HARD_SWISH:int8" not in ops and ops["HARD_SWISH:float32"] > 0  # float islands (XNNPACK)
    edits = result.quantization["graph_edits"]
    assert edits["float_inputs"] == edits["float_outputs"] == 1 and edits["zero_fill_pads"] == 8  # one per LiteMLA branch (2 blocks x 2 branches x 2)
    art = read_manifest(manifest)[1]
    assert not _opcodes(art) & {"RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "PADV2"}


def test_int8_keep_float(b0_int8):
    _, result = b0_int8
    q = result.quantization
    assert q["keep_float"] == list(KEEP_FLOAT) and q["keep_float_nodes"][KEEP_FLOAT[0]] > 0
    assert result.delegation["compute_ops"].get("CONV_2D:float32") == 1  # exactly the kept conv


def test_int8_request_errors(b0, tmp_path):
    backend, model, shape = get_backend("tflite"), b0["model"], (1, 3, *B0_HW)
    out = tmp_path / "m.tflite"
    with pytest.raises(EdgevitError, match="calibration"):
        backend.export(ExportRequest(model, shape, "int8", out))
    with pytest.raises(EdgevitError, match=r"calibration\[0\]"):
        backend.export(ExportRequest(model, shape, "int8", out, calibration=[np.zeros((1, 3, 8, 8), np.float32)]))
    with pytest.raises(EdgevitError, match="did you mean"):
        backend.export(ExportRequest(model, shape, "int8", out, calibration=b0["photos"][:1],
                                     keep_float=("backbone.stages.1.op_list.0.main.inverted_con",)))
    with pytest.raises(EdgevitError, match="int8 only"):
        backend.export(ExportRequest(model, shape, "fp32", out, keep_float=KEEP_FLOAT))
    with pytest.raises(EdgevitError, match="not supported"):
        backend.export(ExportRequest(model, shape, "int4", out))
    assert not out.exists()


def test_zero_fill_pads_is_exact():
    class Pad(nn.Module):
        def forward(self, x):
            return F.pad(x, (0, 0, 0, 1), value=1.0) * 2 + F.pad(x, (0, 0, 1, 0))

    x = torch.randn(2, 3, 5)
    gm = torch.export.export(Pad().eval(), (torch.randn(2, 3, 5),)).module()
    assert litert.zero_fill_pads(gm) == 1
    assert torch.equal(gm(x), Pad()(x))
    aten = torch.ops.aten
    pads = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (aten.pad.default,
                                                                                    aten.constant_pad_nd.default)]
    fill = [n.args[3] if n.target == aten.pad.default and len(n.args) > 3 else
            n.args[2] if n.target == aten.constant_pad_nd.default else None for n in pads]
    assert len(pads) == 2 and not any(fill), fill


# --- runner ------------------------------------------------------------------------------------
def test_runner_validates_input(b0):
    runner = load_artifact(b0["fp32"], threads=1)
    x = b0["photos"][0]
    with pytest.raises(EdgevitError, match="float32"):
        runner(x.astype(np.float64))
    with pytest.raises(EdgevitError, match=r"\(1, 3, 64, 128\)"):
        runner(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(EdgevitError, match="input must be"):
        runner(x.tolist())
    assert runner(x).shape == (1, 19, 8, 16)


def test_runner_rejects_bad_threads_format_and_file(b0, tmp_path):
    manifest, art = read_manifest(b0["fp32"])
    backend = get_backend("tflite")
    with pytest.raises(EdgevitError, match="threads"):
        backend.load(art, manifest, threads=0)
    with pytest.raises(EdgevitError, match="format"):
        backend.load(art, Manifest(**{**manifest.to_json(), "format": "onnx"}))
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(EdgevitError, match="cannot load"):
        backend.load(bad, manifest)
    wrong = Manifest(**{**manifest.to_json(), "inputs": [{**manifest.inputs[0], "shape": [1, 3, 32, 32]}]})
    with pytest.raises(EdgevitError, match="differs"):
        backend.load(art, wrong)


# --- missing toolchain -------------------------------------------------------------------------
def test_missing_toolchain_names_the_extra(b0, tmp_path, monkeypatch):
    manifest, art = read_manifest(b0["fp32"])
    backend = get_backend("tflite")
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(MissingDependencyError, match=r"edgevit\[litert\]"):
        backend.export(ExportRequest(nn.Conv2d(3, 8, 1), (1, 3, 32, 32), "fp32", tmp_path / "m.tflite"))
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(MissingDependencyError, match=r"edgevit\[litert\]"):
        backend.load(art, manifest)
