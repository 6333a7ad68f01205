"""The transposed conv → sub-pixel conv rewrite: exact for every exact-×s configuration, refused otherwise, and
it lets the FSRCNN baseline (9×9 stride-s deconvolution) lower to LiteRT as one XNNPACK partition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import edgevit
from edgevit.lowering.rewrite import SubpixelConvTranspose, export_friendly, subpixel_applies


@pytest.mark.parametrize("s,k,p,op", [(2, 9, 4, 1), (4, 9, 4, 3), (3, 9, 4, 2), (2, 4, 1, 0), (2, 3, 1, 1), (3, 3, 0, 0)])
def test_subpixel_equals_transposed_conv(s, k, p, op):
    torch.manual_seed(s * 100 + k)
    m = nn.ConvTranspose2d(5, 3, k, stride=s, padding=p, output_padding=op)
    x = torch.randn(2, 5, 11, 13)
    with torch.inference_mode():
        want = m(x)
        got = SubpixelConvTranspose(m)(x)
    assert want.shape == got.shape == (2, 3, 11 * s, 13 * s)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)


def test_inexact_or_unsupported_transposed_convs_are_left_alone():
    assert not subpixel_applies(nn.ConvTranspose2d(4, 3, 9, stride=2, padding=4))  # output 2H - 1, not 2H
    assert not subpixel_applies(nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=2))
    assert not subpixel_applies(nn.ConvTranspose2d(4, 3, 3, stride=1, padding=1))
    with pytest.raises(ValueError, match="not an exact"):
        SubpixelConvTranspose(nn.ConvTranspose2d(4, 3, 9, stride=2, padding=4))


@pytest.mark.parametrize("model_id", ["fsrcnn-x2", "fsrcnn-x4"])
def test_fsrcnn_rewrite_is_declared_and_exact(model_id):
    torch.manual_seed(0)
    model = edgevit.create_model(model_id)
    with torch.no_grad():
        model.deconv.weight.normal_(0, 0.05)  # away from the near-zero init, so a wrong phase would show
    x = torch.rand(1, 3, 24, 32)
    new, subs = export_friendly(model, x)
    assert [s.name for s in subs] == ["deconv"] and isinstance(new.deconv, SubpixelConvTranspose)
    assert subs[0].max_abs_diff is not None and subs[0].max_abs_diff < 1e-5
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in new.modules())


def test_fsrcnn_lowers_to_litert_in_one_partition(tmp_path):
    pytest.importorskip("litert_torch", reason="LiteRT extra not installed (pip install 'edgevit[litert]')")
    from edgevit.lowering.base import ExportRequest, get_backend

    torch.manual_seed(0)
    model = edgevit.create_model("fsrcnn-x2")
    x = torch.rand(1, 3, 32, 48)
    new, _ = export_friendly(model, x)
    art = tmp_path / "fsrcnn.tflite"
    result = get_backend("tflite").export(ExportRequest(new, tuple(x.shape), "fp32", art))
    d = result.delegation
    assert d["partitions"] == 1  # before the rewrite the converter failed on the transposed conv
    assert set(d["non_delegated_ops"]) <= {"RELU_0_TO_1:float32"}  # the output clamp, after the partition
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(art))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x.numpy())
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    with torch.inference_mode():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
