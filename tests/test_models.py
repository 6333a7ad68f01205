"""The EfficientViT segmentation family: registry, published sizes, contract, upstream key layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import edgevit
from edgevit.cards import load_card, parse_quantity
from edgevit.errors import UnknownKeyError
from edgevit.models import count_macs, count_params, get_model_entry
from edgevit.models.layers import LiteMLA, Style

ALL_IDS = [
    "efficientvit-seg-b0-cityscapes", "efficientvit-seg-b1-cityscapes", "efficientvit-seg-b2-cityscapes",
    "efficientvit-seg-b3-cityscapes", "efficientvit-seg-l1-cityscapes", "efficientvit-seg-l2-cityscapes",
    "efficientvit-seg-b1-ade20k", "efficientvit-seg-b2-ade20k", "efficientvit-seg-b3-ade20k",
    "efficientvit-seg-l1-ade20k", "efficientvit-seg-l2-ade20k",
]


def test_registry_lists_exactly_the_upstream_ids():
    assert edgevit.list_models("efficientvit-seg-*") == sorted(ALL_IDS + ["efficientvit-seg-b0-voc"])
    assert edgevit.list_models("*-l?-ade20k") == ["efficientvit-seg-l1-ade20k", "efficientvit-seg-l2-ade20k"]


def test_unknown_id_suggests_close_matches():
    with pytest.raises(UnknownKeyError) as err:
        edgevit.create_model("efficientvit-seg-b0-cityscape")
    assert "did you mean 'efficientvit-seg-b0-cityscapes'" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("model_id", ALL_IDS)
def test_params_and_macs_match_published_table(model_id):
    model = edgevit.create_model(model_id)
    pub = load_card(model_id)["published"]
    h, w = map(int, pub["resolution"].split("x"))
    assert get_model_entry(model_id).contract.eval_size == (h, w)
    macs, macs_pub = count_macs(model, (1, 3, h, w)), parse_quantity(pub["macs"])[0]
    assert abs(macs / macs_pub - 1) <= 0.01, f"MACs {macs / 1e9:.2f}G vs published {pub['macs']}"
    params = count_params(model)
    params_pub, resolution = parse_quantity(pub["params"])
    # Within 1%, or, for figures printed to two significant digits (e.g. "15M"), within one unit of the
    # last printed digit: the table rounds, the architecture is the upstream one.
    assert abs(params / params_pub - 1) <= 0.01 or abs(params - params_pub) < resolution, (
        f"params {params / 1e6:.3f}M vs published {pub['params']}"
    )


@pytest.mark.parametrize("model_id", ALL_IDS + ["efficientvit-seg-b0-voc"])
def test_forward_contract_shapes(model_id):
    model = edgevit.create_model(model_id)
    c = model.contract
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (2, c.num_classes, 64 // 8, 96 // 8)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert not model.training


def test_style_per_series():
    b0 = edgevit.create_model("efficientvit-seg-b0-cityscapes")
    l1 = edgevit.create_model("efficientvit-seg-l1-ade20k")
    b_bns = {m.eps for m in b0.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    l_bns = {m.eps for m in l1.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert b_bns == {1e-5} and l_bns == {1e-7}
    assert any(isinstance(m, torch.nn.Hardswish) for m in b0.modules())
    gelus = [m for m in l1.modules() if isinstance(m, torch.nn.GELU)]
    assert gelus and all(m.approximate == "tanh" for m in gelus)
    assert not any(isinstance(m, torch.nn.Hardswish) for m in l1.modules())


# Names and shapes as they appear in upstream checkpoints (read off the upstream module tree).
UPSTREAM_B0_KEYS = {
    "backbone.input_stem.op_list.0.conv.weight": (8, 3, 3, 3),
    "backbone.input_stem.op_list.0.norm.running_var": (8,),
    "backbone.input_stem.op_list.1.main.depth_conv.conv.weight": (8, 1, 3, 3),
    "backbone.input_stem.op_list.1.main.point_conv.norm.weight": (8,),
    "backbone.stages.0.op_list.0.main.inverted_conv.conv.weight": (32, 8, 1, 1),
    "backbone.stages.2.op_list.0.main.inverted_conv.conv.bias": (128,),
    "backbone.stages.2.op_list.0.main.point_conv.norm.bias": (64,),
    "backbone.stages.2.op_list.1.context_module.main.qkv.conv.weight": (192, 64, 1, 1),
    "backbone.stages.2.op_list.1.context_module.main.aggreg.0.0.weight": (192, 1, 5, 5),
    "backbone.stages.2.op_list.1.context_module.main.aggreg.0.1.weight": (192, 16, 1, 1),
    "backbone.stages.2.op_list.1.context_module.main.proj.conv.weight": (64, 128, 1, 1),
    "backbone.stages.2.op_list.1.context_module.main.proj.norm.running_mean": (64,),
    "backbone.stages.2.op_list.1.local_module.main.depth_conv.conv.bias": (256,),
    "backbone.stages.3.op_list.2.local_module.main.point_conv.norm.weight": (128,),
    "head.input_ops.0.op_list.0.conv.weight": (32, 128, 1, 1),
    "head.input_ops.1.op_list.0.norm.weight": (32,),
    "head.input_ops.2.conv.weight": (32, 32, 1, 1),
    "head.middle.op_list.0.main.inverted_conv.conv.weight": (128, 32, 1, 1),
    "head.output_ops.0.op_list.0.conv.weight": (128, 32, 1, 1),
    "head.output_ops.0.op_list.1.conv.weight": (19, 128, 1, 1),
    "head.output_ops.0.op_list.1.conv.bias": (19,),
}
UPSTREAM_L1_CITY_KEYS = {
    "backbone.stages.0.op_list.0.conv.weight": (32, 3, 3, 3),
    "backbone.stages.0.op_list.1.main.conv1.conv.weight": (32, 32, 3, 3),
    "backbone.stages.0.op_list.1.main.conv2.norm.weight": (32,),
    "backbone.stages.1.op_list.0.main.spatial_conv.conv.weight": (512, 32, 3, 3),
    "backbone.stages.1.op_list.1.main.spatial_conv.conv.weight": (256, 64, 3, 3),
    "backbone.stages.3.op_list.0.main.inverted_conv.conv.bias": (2048,),
    "backbone.stages.3.op_list.6.main.depth_conv.conv.bias": (1024,),
    "backbone.stages.4.op_list.0.main.depth_conv.conv.weight": (6144, 1, 3, 3),
    "backbone.stages.4.op_list.6.context_module.main.qkv.conv.weight": (1536, 512, 1, 1),
    "backbone.stages.4.op_list.6.local_module.main.inverted_conv.conv.weight": (3072, 512, 1, 1),
    "head.middle.op_list.2.main.spatial_conv.conv.weight": (256, 256, 3, 3),
    "head.output_ops.0.op_list.0.conv.weight": (19, 256, 1, 1),
}


@pytest.mark.parametrize("model_id,keys", [
    ("efficientvit-seg-b0-cityscapes", UPSTREAM_B0_KEYS),
    ("efficientvit-seg-l1-cityscapes", UPSTREAM_L1_CITY_KEYS),
])
def test_state_dict_uses_upstream_names(model_id, keys):
    sd = edgevit.create_model(model_id).state_dict()
    for key, shape in keys.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("head.output_ops.0.op_list.2") for k in sd)


def _naive_lite_attention(qkv: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """Independent reference: loop over heads and tokens of the ReLU linear attention formula."""
    b, c, h, w = qkv.shape
    t = qkv.double().reshape(b, c // (3 * dim), 3 * dim, h * w)
    out = torch.empty(b, c // (3 * dim), dim, h * w, dtype=torch.float64)
    for bi in range(b):
        for hi in range(t.shape[1]):
            q, k, v = t[bi, hi, :dim].relu(), t[bi, hi, dim:2 * dim].relu(), t[bi, hi, 2 * dim:]
            sim = k.T @ q  # [key, query]
            out[bi, hi] = (v @ sim) / (sim.sum(0, keepdim=True) + eps)
    return out.reshape(b, -1, h, w).float()


@pytest.mark.parametrize("hw", [(6, 5), (2, 2), (1, 3)])  # linear branch (N > dim) and quadratic (N <= dim)
def test_lite_mla_attention_matches_formula(hw):
    torch.manual_seed(0)
    mla = LiteMLA(channels=32, dim=8, scales=(5,), style=Style("hswish", 1e-5))
    qkv = torch.randn(2, 2 * 3 * 32, *hw)
    torch.testing.assert_close(mla.attend(qkv), _naive_lite_attention(qkv, 8, mla.eps), rtol=1e-4, atol=1e-5)


def test_lite_mla_runs_in_float32_for_half_inputs():
    mla = LiteMLA(channels=16, dim=8, scales=(5,), style=Style("hswish", 1e-5))
    qkv = torch.randn(1, 2 * 3 * 16, 4, 4)
    out = mla.attend(qkv.half())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, mla.attend(qkv.half().float()))


def test_head_upsampling_is_bicubic():
    model = edgevit.create_model("efficientvit-seg-b0-cityscapes")
    up = model.head.input_ops[0].op_list[1]
    x = torch.randn(1, 4, 5, 7)
    torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False))
    assert up(x).shape[-2:] == (20, 28)
