"""Declared float regions in int8 export: found for SR models, really float in each backend's graph, and better.

A tiny SR-shaped net (int8 residual convs + bicubic global skip + clamp) on real Set5 crops: with the region, the
skip and the output tail are float in the ONNX / ExecuTorch / LiteRT graph, and the int8 output is closer to float.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgevit
from edgevit.fidelity import sqnr_db
from edgevit.lowering.base import ExportRequest, get_backend
from edgevit.lowering.float_region import FloatRegion, fx_float_nodes
from edgevit.models.sr_common import BicubicSkip
from edgevit.sr.evaluate import load_pairs
from edgevit.tasks.super_resolution import SuperResolutionTask, global_skip_modules

T = 32  # tile of the tiny net


class TinySR(nn.Module):
    """N×3×T×T in [0, 1] → N×3×2T×2T: pixel-shuffled conv residual + bicubic skip (its edge pad repeats
    one border slice)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1))
        self.skip = BicubicSkip(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.pixel_shuffle(self.body(x), 2) + self.skip(x)).clamp(0.0, 1.0)


@pytest.fixture(scope="module")
def crops(shared_data):
    """Real LR crops (float32 1×3×T×T): 8 to calibrate, 4 to compare."""
    out = []
    for _, _, lr, _, _ in load_pairs(shared_data / "sr" / "Set5", 2):
        for y, x in ((0, 0), (40, 40), (70, 20)):
            c = lr[y : y + T, x : x + T]
            if c.shape[:2] == (T, T):
                out.append(np.ascontiguousarray(c.transpose(2, 0, 1)[None].astype(np.float32) / 255))
    assert len(out) >= 12
    return out[:8], out[8:12]


@pytest.fixture(scope="module")
def tiny(crops):
    model = TinySR().eval()
    region = SuperResolutionTask().float_regions(model, torch.from_numpy(crops[0][0]))
    return model, tuple(region)


@pytest.mark.parametrize("model_id", [m for m in edgevit.list_models() if m.startswith(("efficientvit-sr", "fsrcnn"))])
def test_global_skip_is_found_in_every_sr_model(model_id):
    model = edgevit.create_model(model_id).eval()
    t = 48 if model.contract.size_multiple <= 16 else model.contract.size_multiple
    skips = global_skip_modules(model, torch.rand(1, 3, t, t))
    assert skips == ["skip"]  # the image's bicubic skip, not the trunk's feature upsampler (up_resample)


def test_region_declares_skip_and_tail(tiny):
    _, region = tiny
    assert len(region) == 1 and region[0].modules == ("skip",) and region[0].output_tail and region[0].why
    gm = torch.export.export(TinySR().eval(), (torch.rand(1, 3, T, T),)).module()
    names = fx_float_nodes(gm.graph, region)
    targets = {str(n.target).split(".")[1] for n in gm.graph.nodes if n.name in names}
    assert {"clamp", "add", "pixel_shuffle", "conv2d", "cat"} <= targets  # tail + the skip's own conv / pad
    body_convs = [n.name for n in gm.graph.nodes if "conv2d" in str(n.target) and n.name not in names]
    assert len(body_convs) == 2  # the residual convs stay int8


def _export(fmt, model, region, crops, tmp_path, tag):
    out = tmp_path / f"{tag}{get_backend(fmt).extension}"
    request = ExportRequest(model, (1, 3, T, T), "int8", out, list(crops[0]), outputs=("upscaled",),
                            float_regions=region)
    return get_backend(fmt).export(request), out


def _sqnr(fmt, path, result, model, crops):
    from edgevit.manifest import Manifest

    m = Manifest("tiny", fmt, "int8", path.name, "", path.stat().st_size,
                 [{"name": "image", "shape": [1, 3, T, T], "dtype": "float32"}],
                 [{"name": "upscaled", "shape": [1, 3, 2 * T, 2 * T], "dtype": "float32"}], {}, {})
    runner = get_backend(fmt).load(path, m, 1)
    with torch.no_grad():
        return float(np.mean([sqnr_db(model(torch.from_numpy(x)).numpy(), runner(x)) for x in crops[1]]))


def test_onnx_region_is_float_in_the_graph_and_helps(tiny, crops, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (edgevit[onnx])")
    import onnx

    model, region = tiny
    result, path = _export("onnx", model, region, crops, tmp_path, "region")
    plain, plain_path = _export("onnx", model, (), crops, tmp_path, "plain")
    g = onnx.load(str(path)).graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name for i in g.initializer}
    assert producer["upscaled"].op_type == "Clip"  # output not re-quantized
    add = next(n for n in g.node if n.op_type == "Add")
    assert all(producer[i].op_type != "DequantizeLinear" for i in add.input)
    convs = [n for n in g.node if n.op_type == "Conv"]
    float_convs = [n for n in convs if n.input[1] in inits]  # weights as float initializers: the skip
    assert len(float_convs) == 1 and len(convs) == 3
    assert result.delegation["int8_conv"] == 2 and plain.delegation["int8_conv"] == 3
    reads_image = [n for n in g.node if "image" in n.input]
    assert {n.op_type for n in reads_image} >= {"QuantizeLinear", "Slice"}  # the skip's pad reads the float image
    assert result.quantization["float_regions"][0]["modules"] == ["skip"]
    assert _sqnr("onnx", path, result, model, crops) > _sqnr("onnx", plain_path, plain, model, crops) + 3


def test_pte_region_keeps_the_skip_float(tiny, crops, tmp_path):
    pytest.importorskip("executorch", reason="executorch not installed (edgevit[executorch])")
    model, region = tiny
    result, path = _export("pte", model, region, crops, tmp_path, "region")
    q = result.quantization
    assert q["weighted_ops_int8"] == 2 and q["weighted_ops_float"] == 1
    assert any("skip" in op for op in q["float_weighted_ops"]) and q["float_region_nodes"]
    assert _sqnr("pte", path, result, model, crops) > 30


def test_tflite_int8_with_repeated_cat_inputs_and_region(tiny, crops, tmp_path):
    """The edge pad concatenates one border slice twice: that used to recurse forever in prepare_pt2e."""
    pytest.importorskip("litert_torch", reason="litert-torch not installed (edgevit[litert])")
    model, region = tiny
    plain, plain_path = _export("tflite", model, (), crops, tmp_path, "plain")  # RecursionError before the fix
    result, path = _export("tflite", model, region, crops, tmp_path, "region")
    assert result.quantization["float_region_nodes"] and not plain.quantization["float_region_nodes"]
    assert _sqnr("tflite", path, result, model, crops) > _sqnr("tflite", plain_path, plain, model, crops) + 3


def test_region_modules_are_checked(crops, tmp_path):
    with pytest.raises(edgevit.EdgevitError, match="did you mean 'skip'"):
        ExportRequest(TinySR(), (1, 3, T, T), "int8", tmp_path / "x.onnx", list(crops[0]),
                      float_regions=(FloatRegion("r", ("skp",)),))
