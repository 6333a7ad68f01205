"""Super-resolution families: registry entries, contract shapes on odd tiny inputs, the exact bicubic skip,
the declared receptive field (which makes tiling exact) and strict weight round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import edgevit
from edgevit.models import get_model_entry
from edgevit.models.sr_common import BicubicSkip, SRContract, bicubic_phase_kernel, edge_pad

SR_IDS = [m for m in edgevit.list_models() if isinstance(get_model_entry(m).contract, SRContract)]


def test_sr_family_is_registered():
    assert {"efficientvit-sr-s-x2", "efficientvit-sr-s-x4", "efficientvit-sr-m-x2", "efficientvit-sr-m-x4",
            "efficientvit-sr-t-x2", "efficientvit-sr-t-x4", "fsrcnn-x2", "fsrcnn-x4"} <= set(SR_IDS)
    with pytest.raises(edgevit.UnknownKeyError, match="did you mean .*'efficientvit-sr-s-x2'"):
        edgevit.create_model("efficientvit-sr-s-x3")


@pytest.mark.parametrize("model_id", SR_IDS)
@pytest.mark.parametrize("hw", [(7, 5), (1, 1), (19, 34)])
def test_forward_contract(model_id, hw):
    torch.manual_seed(0)
    model = edgevit.create_model(model_id)
    s = model.contract.scale
    assert model_id.endswith(f"x{s}") and model.contract.to_dict()["task"] == "super-resolution"
    x = torch.rand(2, 3, *hw)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (2, 3, s * hw[0], s * hw[1]) and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    # batch items are independent
    with torch.inference_mode():
        torch.testing.assert_close(model(x[1:]), y[1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("hw", [(1, 1), (5, 9), (16, 11)])
def test_bicubic_skip_equals_interpolate(scale, hw):
    x = torch.rand(1, 3, *hw)
    ref = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(BicubicSkip(scale)(x), ref, atol=1e-5, rtol=0)
    assert np.allclose(bicubic_phase_kernel(scale).sum(axis=(1, 2)), 1.0)


def test_edge_pad_replicates_borders():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    torch.testing.assert_close(edge_pad(x, 2, 1, 1, 2), F.pad(x, (2, 1, 1, 2), mode="replicate"))


def _tiny_depth3(scale: int) -> torch.nn.Module:
    """EfficientViT-SR with a third block (as the m variants) but few channels, and its contract."""
    from edgevit.models.efficientvit_sr import EfficientViTSR, SRConfig, receptive_margin

    cfg = SRConfig(stem=8, width=16, depth=3)
    model = EfficientViTSR(cfg, scale)
    margin = -(-receptive_margin(cfg) // 16) * 16
    model.contract = SRContract(scale, tile=2 * margin + 16, margin=margin, size_multiple=16)
    return model


@pytest.mark.parametrize("model_id", ["efficientvit-sr-s-x2", "efficientvit-sr-s-x4", "efficientvit-sr-t-x2",
                                      "depth3-x2", "fsrcnn-x2", "fsrcnn-x4"])
def test_receptive_field_within_declared_margin(model_id):
    """The gradient of one output pixel vanishes on every input pixel farther than the contract's margin,
    and does not vanish everywhere inside (the bound is not vacuous)."""
    torch.manual_seed(0)
    model = _tiny_depth3(2) if model_id == "depth3-x2" else edgevit.create_model(model_id)
    model.train()  # no output clamp that could zero gradients
    c = model.contract
    n = 2 * c.margin + 3 * c.size_multiple + 8
    n += -n % c.size_multiple
    x = torch.rand(1, 3, n, n, requires_grad=True)
    cy = cx = c.margin + c.size_multiple + 3  # off the window grid on purpose
    model(x)[0, :, c.scale * cy, c.scale * cx].sum().backward()
    g = x.grad.abs().sum(dim=(0, 1))
    ys, xs = torch.nonzero(g, as_tuple=True)
    assert int((ys - cy).abs().max()) <= c.margin and int((xs - cx).abs().max()) <= c.margin
    assert int((ys - cy).abs().max()) >= 2


@pytest.mark.parametrize("model_id", ["efficientvit-sr-s-x4", "fsrcnn-x2"])
def test_weights_round_trip_strictly(model_id, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    a = edgevit.create_model(model_id)
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(tmp_path / "w.safetensors"))
    b = edgevit.create_model(model_id, weights=tmp_path / "w.safetensors")
    x = torch.rand(1, 3, 12, 10)
    with torch.inference_mode():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
    save_file({"stem.0.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(edgevit.EdgevitError):
        edgevit.create_model(model_id, weights=tmp_path / "bad.safetensors")
