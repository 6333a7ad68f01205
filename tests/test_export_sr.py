"""Super-resolution through the generic export pipeline: tile artifacts, PSNR-Y fidelity and the 0.1 dB gate."""

from __future__ import annotations

import numpy as np
import pytest

import edgevit
from edgevit.errors import EdgevitError
from edgevit.export import GateError, export
from edgevit.manifest import read_manifest
from edgevit.sr.evaluate import evaluate_sr
from edgevit.tasks.super_resolution import SRGate

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (edgevit[onnx])")

MODEL = "efficientvit-sr-s-x2"
T = 144  # > 2 x margin (64), a multiple of 16: a small tile keeps the test fast
TILE = f"{T}x{T}"


@pytest.fixture(scope="module")
def set5(shared_data):
    return shared_data / "sr" / "Set5"


@pytest.fixture(scope="module")
def fp32(set5, tmp_path_factory):
    out = tmp_path_factory.mktemp("sr") / "onnx-fp32"
    return export(MODEL, "onnx", "fp32", out, eval_data=set5, input_size=TILE, progress=False), out


def test_sr_artifact_manifest_and_fidelity(fp32):
    m, out = fp32
    assert m.contract["task"] == "super-resolution" and m.contract["tiling"]["tile"] == T
    assert [i["name"] for i in m.inputs] == ["image"] and m.inputs[0]["shape"] == [1, 3, T, T]
    assert [o["name"] for o in m.outputs] == ["upscaled"] and m.outputs[0]["shape"] == [1, 3, 2 * T, 2 * T]
    f = m.fidelity
    assert f["images"]["count"] == 5 and f["gate_result"] == "passed" and f["gate"] == {"max_psnr_drop": 0.1}
    assert abs(f["psnr_drop"]) < 0.01 and f["psnr_float"] > 25  # the bicubic skip alone gives ~33 dB on Set5
    runner = edgevit.load_artifact(out)
    x = np.random.default_rng(0).random((1, 3, T, T), dtype=np.float32)
    y = runner(x)
    assert y.shape == (1, 3, 2 * T, 2 * T) and np.isfinite(y).all()


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
    with pytest.raises(EdgevitError, match="square tiles"):
        export(MODEL, "onnx", "fp32", tmp_path / "x", eval_data=set5, input_size="128x256", progress=False)
    with pytest.raises(EdgevitError, match="margin"):
        export(MODEL, "onnx", "fp32", tmp_path / "x", eval_data=set5, input_size="64x64", progress=False)
