"""ExecuTorch backend (XNNPACK .pte) and the export-friendly rewrites it relies on.

Small inputs only: seg-b0-cityscapes at 64×128 (B-series, both LiteMLA orders) and an L-series block of seg-l1-ade20k
on the features of 64×64 photos. int8 is calibrated on real photos from the shared evaluation pack.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgevit
from edgevit.errors import EdgevitError, MissingDependencyError
from edgevit.fidelity import sqnr_db
from edgevit.io import read_image
from edgevit.lowering.base import BACKENDS, ExportRequest, get_backend
from edgevit.lowering.rewrite import BmmLiteMLA, export_friendly
from edgevit.manifest import Manifest
from edgevit.models.layers import Chain, LiteMLA, Style
from edgevit.processing import FixedSize, image_to_input

pytest.importorskip("executorch.exir")

B0 = "efficientvit-seg-b0-cityscapes"
L1 = "efficientvit-seg-l1-ade20k"
# A nested LiteMLA of the last stage and the classifier conv: kept float in the int8 export.
KEEP = ("backbone.stages.3.op_list.1.context_module.main", "head.output_ops.0.op_list.1")


def _manifest(shape: tuple[int, ...], precision: str = "fp32") -> Manifest:
    return Manifest("test", "pte", precision, "model.pte", "", 0,
                    [{"name": "image", "shape": list(shape), "dtype": "float32", "layout": "NCHW"}], [], {}, {})


def _rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _eager(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> list[np.ndarray]:
    paths = sorted((shared_data / "seg" / "voc2012_val14" / "images").glob("*.png"))
    assert len(paths) >= 5
    return [read_image(p) for p in paths[:5]]


def _inputs(photos: list[np.ndarray], h: int, w: int) -> list[np.ndarray]:
    return [image_to_input(im, FixedSize(h, w)) for im in photos]


@pytest.fixture(scope="module")
def b0(photos):
    torch.manual_seed(0)
    model = edgevit.create_model(B0)
    xs = _inputs(photos, 64, 128)
    friendly, subs = export_friendly(model, torch.from_numpy(xs[0]))
    return model, friendly, subs, xs


@pytest.fixture(scope="module")
def b0_fp32(b0, tmp_path_factory):
    _, friendly, _, xs = b0
    out = tmp_path_factory.mktemp("b0fp32") / "model.pte"
    result = get_backend("pte").export(ExportRequest(friendly, (1, 3, 64, 128), "fp32", out))
    return result, out


@pytest.fixture(scope="module")
def b0_int8(b0, tmp_path_factory):
    _, friendly, _, xs = b0
    out = tmp_path_factory.mktemp("b0int8") / "model.pte"
    request = ExportRequest(friendly, (1, 3, 64, 128), "int8", out, calibration=xs[:3], keep_float=KEEP)
    return get_backend("pte").export(request), out


# --- rewrites ---------------------------------------------------------------------------------


@pytest.mark.parametrize("hw, scales", [((8, 8), (5,)), ((2, 4), (5,)), ((4, 4), (3, 5))])  # N >, <, == dim 16
def test_bmm_litemla_equals_litemla(hw, scales):
    torch.manual_seed(1)
    ref = LiteMLA(64, 16, scales, Style("hswish", 1e-5)).eval()
    new = BmmLiteMLA.from_module(ref)
    x = torch.randn(2, 64, *hw)
    with torch.inference_mode():
        a, b = ref(x), new(x)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), float((a - b).abs().max())
    assert dict(new.named_parameters()).keys() == dict(ref.named_parameters()).keys()


def test_export_friendly_records_exact_substitutions(b0):
    model, friendly, subs, xs = b0
    kinds = {s.name: s.original for s in subs}
    assert sum("LiteMLA" in k for k in kinds.values()) == 4
    assert sum("bicubic" in k for k in kinds.values()) == 2
    assert all(isinstance(friendly.get_submodule(n), BmmLiteMLA) for n, k in kinds.items() if "LiteMLA" in k)
    # measured, and exact up to float rounding
    assert all(s.max_abs_diff is not None and s.max_abs_diff < 1e-4 for s in subs)
    # parameter names are unchanged (keep-float names and checkpoints refer to them)
    assert dict(friendly.named_parameters()).keys() == dict(model.named_parameters()).keys()
    assert _rel_err(_eager(friendly, xs[1]), _eager(model, xs[1])) < 1e-5


# --- fp32 --------------------------------------------------------------------------------------


def test_backend_registered():
    backend = get_backend("pte")
    assert BACKENDS.get("pte").endswith(":ExecuTorchBackend")
    assert (backend.name, backend.extension, backend.precisions, backend.extra) == (
        "pte", ".pte", ("fp32", "int8"), "executorch")


def test_fp32_pte_matches_eager_and_delegates_fully(b0, b0_fp32):
    model, friendly, _, xs = b0
    result, path = b0_fp32
    assert path.is_file() and path.stat().st_size > 0
    assert set(result.tool_versions) >= {"torch", "executorch", "torchao"}
    d = result.delegation
    assert d["partitions"] == 1 and d["non_delegated_compute_nodes"] == 0 and d["non_delegated_ops"] == {}
    assert d["delegated_nodes"] > 100
    runner = get_backend("pte").load(path, _manifest((1, 3, 64, 128)))
    for x in xs[:2]:
        y = runner(x)
        assert y.shape == (1, 19, 8, 16) and y.dtype == np.float32
        assert _rel_err(y, _eager(model, x)) <= 1e-4
    assert runner.threads >= 1 and runner.load_seconds > 0 and runner.last_seconds > 0


def test_fp32_pte_l_series_block(photos, tmp_path):
    """The L-series attention stage's first two blocks (GELU MBConv downsample + EfficientViT block) of
    seg-l1-ade20k, fed with its real stage-3 features of 64×64 photos (the whole model only adds time)."""
    torch.manual_seed(0)
    model = edgevit.create_model(L1)
    with torch.inference_mode():
        feats = [model.backbone(torch.from_numpy(x))["stage3"].numpy() for x in _inputs(photos[:2], 64, 64)]
    block = Chain(list(model.backbone.stages[4].op_list[:2])).eval()
    friendly, subs = export_friendly(block, torch.from_numpy(feats[0]))
    assert [type(friendly.get_submodule(s.name)) for s in subs] == [BmmLiteMLA]
    out, shape = tmp_path / "l1.pte", feats[0].shape
    result = get_backend("pte").export(ExportRequest(friendly, shape, "fp32", out))
    assert result.delegation["partitions"] == 1 and result.delegation["non_delegated_compute_nodes"] == 0
    runner = get_backend("pte").load(out, _manifest(shape))
    assert _rel_err(runner(feats[1]), _eager(block, feats[1])) <= 1e-4


def test_runner_rejects_wrong_shape_and_dtype(b0, b0_fp32):
    _, _, _, xs = b0
    runner = get_backend("pte").load(b0_fp32[1], _manifest((1, 3, 64, 128)))
    for bad in (xs[0].astype(np.float64), xs[0][:, :, :32], xs[0][0], torch.from_numpy(xs[0])):
        with pytest.raises(EdgevitError, match="input must be float32"):
            runner(bad)


def test_thread_pool_is_not_resized_under_a_loaded_program(b0, b0_fp32):
    from edgevit.lowering.executorch import set_threads

    x = b0[3][0]
    backend, manifest = get_backend("pte"), _manifest((1, 3, 64, 128))
    first = backend.load(b0_fp32[1], manifest)
    n = first.threads
    other = 1 if n != 1 else 2
    with pytest.raises(EdgevitError, match="thread"):
        backend.load(b0_fp32[1], manifest, threads=other)
    y = first(x)
    del first
    gc.collect()
    try:
        second = backend.load(b0_fp32[1], manifest, threads=other)
        assert second.threads == other
        np.testing.assert_allclose(second(x), y, rtol=1e-5, atol=1e-5)
        del second
        gc.collect()
    finally:
        set_threads(n)


# --- int8 --------------------------------------------------------------------------------------


def test_int8_pte_close_to_float_on_held_out_image(b0, b0_int8):
    model, _, _, xs = b0
    result, path = b0_int8
    assert result.delegation["partitions"] == 1 and result.delegation["non_delegated_compute_nodes"] == 0
    q = result.quantization
    assert "per-output-channel" in q["scheme"] and q["calibration_images"] == 3
    assert q["weighted_ops_int8"] > 40
    runner = get_backend("pte").load(path, _manifest((1, 3, 64, 128), "int8"))
    held_out = xs[4]  # not among the calibration images
    assert _cosine(runner(held_out), _eager(model, held_out)) > 0.99


def test_int8_keep_float_leaves_those_modules_unquantized(b0, b0_int8):
    _, friendly, _, _ = b0
    q = b0_int8[0].quantization
    weighted = (nn.Conv2d, nn.Linear)
    expected = {name: sum(isinstance(m, weighted) for m in friendly.get_submodule(name).modules()) for name in KEEP}
    assert all(n > 0 for n in expected.values())
    assert q["kept_float"] == expected  # every conv inside the kept modules stayed float ...
    assert q["weighted_ops_float"] == sum(expected.values())  # ... and nothing else did
    assert all(any(p == k or p.startswith(k + ".") for k in KEEP) for p in q["float_weighted_ops"])
    assert q["kept_float_added"] == {}


def test_float_litemla_aggregation_keeps_its_qkv_float(b0):
    from edgevit.lowering.executorch import _widen_keep_float

    mla = "backbone.stages.2.op_list.1.context_module.main"
    for kept in (f"{mla}.aggreg", f"{mla}.aggreg.0.0", f"{mla}.aggreg.0"):
        names, added = _widen_keep_float(b0[1], (kept,))
        assert names == (kept, f"{mla}.qkv") and list(added) == [f"{mla}.qkv"]
    for kept in (mla, f"{mla}.aggreg.0.1", f"{mla}.proj", f"{mla}.qkv"):
        assert _widen_keep_float(b0[1], (kept,)) == ((kept,), {})


def test_int8_requires_calibration(b0, tmp_path):
    friendly = b0[1]
    for calib in (None, []):
        with pytest.raises(EdgevitError, match="calibration"):
            get_backend("pte").export(ExportRequest(friendly, (1, 3, 64, 128), "int8", tmp_path / "m.pte", calib))
    with pytest.raises(EdgevitError, match=r"calibration\[0\]"):
        get_backend("pte").export(ExportRequest(friendly, (1, 3, 64, 128), "int8", tmp_path / "m.pte",
                                                [np.zeros((1, 3, 32, 32), np.float32)]))
    assert not (tmp_path / "m.pte").exists()


def test_unknown_keep_float_name_is_refused(b0, tmp_path):
    friendly, xs = b0[1], b0[3]
    name = KEEP[0].replace("context_module", "context_modul")
    with pytest.raises(EdgevitError, match="did you mean"):
        get_backend("pte").export(ExportRequest(friendly, (1, 3, 64, 128), "int8", tmp_path / "m.pte", xs[:1],
                                                keep_float=(name,)))


def test_unsupported_precision(b0, tmp_path):
    with pytest.raises(EdgevitError, match="fp16"):
        get_backend("pte").export(ExportRequest(b0[1], (1, 3, 64, 128), "fp16", tmp_path / "m.pte"))


# --- missing toolchain ---------------------------------------------------------------------------


def test_missing_executorch_names_the_extra(b0, b0_fp32, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "executorch.exir", None)  # import raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgevit\[executorch\]'"):
        get_backend("pte").export(ExportRequest(b0[1], (1, 3, 64, 128), "fp32", tmp_path / "m.pte"))
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)
    with pytest.raises(MissingDependencyError, match="executorch"):
        get_backend("pte").load(b0_fp32[1], _manifest((1, 3, 64, 128)))


# --- dynamic int8 activations ---------------------------------------------------------------------


class _ConvNet(nn.Module):
    """3×3 stem, two residual 1×1 / 3×3 conv pairs with ReLU, 1×1 head: conv / linear inputs everywhere."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(32, 64, 1), nn.ReLU(), nn.Conv2d(64, 32, 3, padding=1))
                                    for _ in range(2))
        self.head = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


@pytest.fixture(scope="module")
def convnet_int8(photos, tmp_path_factory):
    """The residual ``_ConvNet`` as int8 .pte three ways, static (placement ``all``), static ``weighted`` and
    dynamic: ``{variant: (ExportResult, SQNR of its output vs eager on a held-out photo)}``."""
    torch.manual_seed(0)
    model = _ConvNet().eval()
    xs = _inputs(photos, 64, 128)
    ref = _eager(model, xs[4])
    tmp = tmp_path_factory.mktemp("convnet_int8")
    variants = {"static": {}, "weighted": {"placement": "weighted"}, "dynamic": {"activations": "dynamic"}}
    runs = {}
    for name, options in variants.items():
        out = tmp / f"{name}.pte"
        result = get_backend("pte").export(ExportRequest(model, (1, 3, 64, 128), "int8", out, calibration=xs[:3],
                                                         **options))
        assert result.delegation["non_delegated_compute_nodes"] == 0
        runs[name] = result, sqnr_db(ref, get_backend("pte").load(out, _manifest((1, 3, 64, 128), "int8"))(xs[4]))
    return runs


def test_dynamic_int8_activations_are_more_precise_than_static(convnet_int8):
    for mode in ("static", "dynamic"):
        q = convnet_int8[mode][0].quantization
        assert q["activations"] == mode
        # XNNPACKQuantizer has no dynamic conv+ReLU pattern: under dynamic activations the 1×1 convs that feed a
        # ReLU stay float32 (reported per op)
        assert q["float_weighted_ops"] == ([] if mode == "static" else ["blocks.0.0", "blocks.1.0"])
        assert q["weighted_ops_int8"] == (6 if mode == "static" else 4)
        assert ("is_dynamic" in q["scheme"]) == (mode == "dynamic")
        assert q["calibration_images"] == (0 if mode == "dynamic" else 3)  # dynamic ranges observe nothing
    # run-time ranges at conv inputs, float adds: no requantization of the residual stream
    sqnr = {mode: convnet_int8[mode][1] for mode in ("static", "dynamic")}
    assert sqnr["dynamic"] > sqnr["static"] + 3 and sqnr["dynamic"] > 30, sqnr


def test_weighted_placement_keeps_the_residual_stream_float(convnet_int8):
    """Static int8 with ``placement="weighted"``: the residual adds are not re-quantized (float32 inside the
    delegate), the convs stay int8, and the output is closer to float than with every add in int8."""
    for name, placement in (("static", "all"), ("weighted", "weighted")):
        q = convnet_int8[name][0].quantization
        assert q["placement"].startswith(f"{placement}: ")
        assert q["weighted_ops_int8"] == 6 and not q["float_weighted_ops"]
        assert (q["int8_elementwise_ops"] == 0) == (placement == "weighted"), q["int8_elementwise_ops"]
    assert convnet_int8["weighted"][1] > convnet_int8["static"][1], {k: v[1] for k, v in convnet_int8.items()}


def test_activation_modes_are_checked(b0, tmp_path):
    friendly, xs = b0[1], b0[3]
    with pytest.raises(edgevit.UnknownKeyError, match="did you mean 'dynamic'"):
        ExportRequest(friendly, (1, 3, 64, 128), "int8", tmp_path / "m.pte", xs[:1], activations="dinamic")
    with pytest.raises(EdgevitError, match="int8 only"):
        ExportRequest(friendly, (1, 3, 64, 128), "fp32", tmp_path / "m.pte", activations="dynamic")
    request = ExportRequest(friendly, (1, 3, 64, 128), "int8", tmp_path / "m.onnx", xs[:1], activations="dynamic")
    with pytest.raises(EdgevitError, match="onnx: int8 activations 'dynamic' are not implemented"):
        get_backend("onnx").export(request)
    assert not (tmp_path / "m.onnx").exists()
