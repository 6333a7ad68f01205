"""Super-resolution through the generic export pipeline: tile artifacts, PSNR-Y fidelity and the 0.1 dB gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgevit
from edgevit.errors import EdgevitError
from edgevit.export import GateError, export
from edgevit.manifest import read_manifest
from edgevit.sr.evaluate import evaluate_sr
from edgevit.tasks.super_resolution import SRGate

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (edgevit[onnx])")

MODEL = "efficientvit-sr-s-x2"
T, TW = 144, 176  # > 2 x margin (64), multiples of 16, small to keep the test fast; rectangular like a frame
TILE = f"{T}x{TW}"


@pytest.fixture(scope="module")
def set5(shared_data):
    return shared_data / "sr" / "Set5"


@pytest.fixture(scope="module")
def fp32(set5, tmp_path_factory):
    out = tmp_path_factory.mktemp("sr") / "onnx-fp32"
    torch.manual_seed(0)  # random init, reproduced by test_runner_handles_awkward_images
    return export(MODEL, "onnx", "fp32", out, eval_data=set5, input_size=TILE, progress=False), out


def test_sr_artifact_manifest_and_fidelity(fp32):
    m, out = fp32
    assert m.contract["task"] == "super-resolution" and m.contract["tiling"]["tile"] == [T, TW]
    assert [i["name"] for i in m.inputs] == ["image"] and m.inputs[0]["shape"] == [1, 3, T, TW]
    assert [o["name"] for o in m.outputs] == ["upscaled"] and m.outputs[0]["shape"] == [1, 3, 2 * T, 2 * TW]
    f = m.fidelity
    assert f["images"]["count"] == 5 and f["gate_result"] == "passed" and f["gate"] == {"max_psnr_drop": 0.1}
    assert abs(f["psnr_drop"]) < 0.01 and f["psnr_float"] > 25  # the bicubic skip alone gives ~33 dB on Set5
    runner = edgevit.load_artifact(out)
    x = np.random.default_rng(0).random((1, 3, T, TW), dtype=np.float32)
    y = runner(x)
    assert y.shape == (1, 3, 2 * T, 2 * TW) and np.isfinite(y).all()


def test_sr_artifact_runs_whole_images_through_tiles(fp32, set5):
    """The artifact takes fixed tiles; evaluate_sr tiles whole Set5 images through it (any size)."""
    m, out = fp32
    from edgevit.models.sr_common import SRContract

    runner = edgevit.load_artifact(out)
    result = evaluate_sr(runner, set5, 2, contract=SRContract.from_dict(m.contract), progress=False)
    assert len(result.images) == 5
    assert abs(result.psnr - m.fidelity["psnr_artifact"]) < 1e-3  # evaluate_sr rounds per-image PSNR to 1e-4


def test_sr_gate_fails_clearly_and_writes_nothing(set5, tmp_path):
    out = tmp_path / "gated"
    with pytest.raises(GateError, match="PSNR-Y drop"):
        export(MODEL, "onnx", "fp32", out, eval_data=set5, input_size=TILE, gate=SRGate(max_psnr_drop=-1.0),
               progress=False)
    assert not out.exists()


def test_sr_tile_size_is_checked(set5, tmp_path):
    with pytest.raises(EdgevitError, match="multiples of 16"):
        export(MODEL, "onnx", "fp32", tmp_path / "x", eval_data=set5, input_size="144x150", progress=False)
    with pytest.raises(EdgevitError, match="margin"):
        export(MODEL, "onnx", "fp32", tmp_path / "x", eval_data=set5, input_size="64x64", progress=False)


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    """HR photos the runner path must handle: odd sizes (one larger than a tile), gray, 16-bit gray, tiny."""
    from PIL import Image

    from edgevit import processing

    root = tmp_path_factory.mktemp("awkward")
    rng = np.random.default_rng(0)
    base = processing.resize_bicubic(rng.integers(0, 256, (24, 20, 3)).astype(np.uint8), (331, 297))
    Image.fromarray(base).save(root / "odd_large.png")  # LR 165x148: several 144x176 tiles, odd HR size
    Image.fromarray(base[:61, :47]).save(root / "odd_small.png")  # LR 30x23: smaller than a tile
    Image.fromarray(base[:40, :40, 1]).save(root / "gray.png")
    Image.fromarray(base[:44, :36, 0].astype(np.uint16) * 257).save(root / "deep.png")  # 16-bit gray
    return root


def test_runner_handles_awkward_images(fp32, awkward):
    """Odd sizes, gray, 16-bit gray, smaller than a tile: through the artifact's runner, equal to eager tiling."""
    from edgevit.models.sr_common import SRContract
    from edgevit.sr.evaluate import load_pairs, upscale_image

    m, out = fp32
    runner, contract = edgevit.load_artifact(out), SRContract.from_dict(m.contract)
    r = evaluate_sr(runner, awkward, 2, contract=contract, progress=False)
    assert [i["image"] for i in r.images] == ["deep", "gray", "odd_large", "odd_small"]
    assert all(np.isfinite(i["psnr"]) and 0 < i["ssim"] <= 1 for i in r.images)
    assert [i["gray"] for i in r.images] == [True, True, False, False]
    torch.manual_seed(0)
    model = edgevit.create_model(MODEL)  # the fixture's random weights
    for name, hr, lr, _, _ in load_pairs(awkward, 2):
        got, want = upscale_image(runner, lr, contract), upscale_image(model, lr, contract)
        assert got.shape == hr.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1, name


def test_runner_refuses_16bit_colour_clearly(fp32, tmp_path):
    import struct
    import zlib

    from edgevit.models.sr_common import SRContract

    raw = b"".join(b"\x00" + np.zeros((20, 3), ">u2").tobytes() for _ in range(20))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20, 20, 16, 2, 0, 0, 0))
    (tmp_path / "rgb16.png").write_bytes(png + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    m, out = fp32
    with pytest.raises(EdgevitError, match="16-bit colour PNG"):
        evaluate_sr(edgevit.load_artifact(out), tmp_path, 2, contract=SRContract.from_dict(m.contract), progress=False)


def test_sr_int8_keeps_the_declared_region_and_passes(set5, tmp_path):
    """Pipeline int8 (random weights, 144x176 tiles): the manifest records the region; the skip conv is float."""
    m = export(MODEL, "onnx", "int8", tmp_path / "q", calib=set5, eval_data=set5, input_size=TILE, gate=None,
               progress=False)
    q = m.quantization
    assert [r["modules"] for r in q["float_regions"]] == [["skip"]] and q["float_regions"][0]["output_tail"]
    assert "node_clamp" in q["float_region_nodes"] and q["int8_conv"] > 10
    assert m.fidelity["gate_result"] == "passed" and m.fidelity["psnr_drop"] < 0.1  # measured with gate=None
