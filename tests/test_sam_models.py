"""EfficientViT-SAM family: published sizes, upstream key layout, strict loading, static prompt decoder."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import edgevit
from edgevit.cards import load_card, parse_quantity
from edgevit.errors import EdgevitError
from edgevit.models import count_macs, count_params, get_model_entry
from edgevit.models.sam_decoder import MaskDecoder, PromptDecoder, PromptEncoder

SAM_IDS = [f"efficientvit-sam-{k}" for k in ("l0", "l1", "l2", "xl0", "xl1")]


def _meta(model_id: str) -> torch.nn.Module:
    with torch.device("meta"):
        return edgevit.create_model(model_id)


def test_registry_lists_the_sam_ids():
    assert edgevit.list_models("efficientvit-sam-*") == sorted(SAM_IDS)


@pytest.mark.parametrize("model_id", SAM_IDS)
def test_params_and_encoder_macs_match_published_table(model_id):
    model = _meta(model_id)
    pub = load_card(model_id)["published"]
    s = get_model_entry(model_id).contract.image_size
    assert pub["resolution"] == f"{s}x{s}"
    params, macs = count_params(model), count_macs(model.image_encoder, (1, 3, s, s))
    assert abs(params / parse_quantity(pub["params"])[0] - 1) <= 0.01, f"params {params / 1e6:.3f}M vs {pub['params']}"
    assert abs(macs / parse_quantity(pub["macs"])[0] - 1) <= 0.01, f"MACs {macs / 1e9:.2f}G vs {pub['macs']}"


# Names and shapes as they appear in upstream checkpoints (read off the upstream module trees of
# efficientvit.models.efficientvit.sam and segment_anything.modeling).
UPSTREAM_KEYS = {
    "efficientvit-sam-l0": {
        "image_encoder.backbone.stages.0.op_list.0.conv.weight": (32, 3, 3, 3),
        "image_encoder.backbone.stages.0.op_list.1.main.conv1.conv.weight": (32, 32, 3, 3),
        "image_encoder.backbone.stages.1.op_list.0.main.spatial_conv.conv.weight": (512, 32, 3, 3),
        "image_encoder.backbone.stages.3.op_list.0.main.inverted_conv.conv.bias": (2048,),
        "image_encoder.backbone.stages.4.op_list.4.context_module.main.qkv.conv.weight": (1536, 512, 1, 1),
        "image_encoder.backbone.stages.4.op_list.1.context_module.main.aggreg.0.0.weight": (1536, 1, 5, 5),
        "image_encoder.backbone.stages.4.op_list.1.local_module.main.point_conv.norm.running_var": (512,),
        "image_encoder.neck.input_ops.0.op_list.0.conv.weight": (256, 512, 1, 1),
        "image_encoder.neck.input_ops.2.op_list.0.norm.weight": (256,),
        "image_encoder.neck.middle.op_list.3.main.spatial_conv.conv.weight": (256, 256, 3, 3),
        "image_encoder.neck.output_ops.0.op_list.0.conv.bias": (256,),
        "image_encoder.norm.weight": (256,),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
        "prompt_encoder.point_embeddings.3.weight": (1, 256),
        "prompt_encoder.not_a_point_embed.weight": (1, 256),
        "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2),
        "prompt_encoder.mask_downscaling.4.bias": (16,),
        "prompt_encoder.mask_downscaling.6.weight": (256, 16, 1, 1),
        "prompt_encoder.no_mask_embed.weight": (1, 256),
        "mask_decoder.iou_token.weight": (1, 256),
        "mask_decoder.mask_tokens.weight": (4, 256),
        "mask_decoder.transformer.layers.0.self_attn.q_proj.weight": (256, 256),
        "mask_decoder.transformer.layers.1.cross_attn_token_to_image.k_proj.weight": (128, 256),
        "mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.weight": (256, 128),
        "mask_decoder.transformer.layers.0.mlp.lin1.weight": (2048, 256),
        "mask_decoder.transformer.layers.1.norm4.bias": (256,),
        "mask_decoder.transformer.final_attn_token_to_image.v_proj.weight": (128, 256),
        "mask_decoder.transformer.norm_final_attn.weight": (256,),
        "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
        "mask_decoder.output_upscaling.1.weight": (64,),
        "mask_decoder.output_upscaling.3.weight": (64, 32, 2, 2),
        "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (32, 256),
        "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
    },
    "efficientvit-sam-xl0": {
        "image_encoder.backbone.stages.0.op_list.0.conv.weight": (32, 3, 3, 3),
        "image_encoder.backbone.stages.3.op_list.2.main.spatial_conv.conv.weight": (1024, 256, 3, 3),
        "image_encoder.backbone.stages.4.op_list.0.main.inverted_conv.conv.weight": (4096, 256, 1, 1),
        "image_encoder.backbone.stages.5.op_list.3.context_module.main.aggreg.0.0.weight": (3072, 1, 3, 3),
        "image_encoder.backbone.stages.5.op_list.1.local_module.main.inverted_conv.conv.weight": (6144, 1024, 1, 1),
        "image_encoder.neck.input_ops.0.op_list.0.conv.weight": (256, 1024, 1, 1),
        "image_encoder.neck.middle.op_list.5.main.spatial_conv.conv.weight": (1024, 256, 3, 3),
        "image_encoder.neck.middle.op_list.5.main.point_conv.conv.weight": (256, 1024, 1, 1),
    },
}


@pytest.mark.parametrize("model_id", sorted(UPSTREAM_KEYS))
def test_state_dict_uses_upstream_names(model_id):
    own = {k: tuple(v.shape) for k, v in _meta(model_id).state_dict().items()}
    for key, shape in UPSTREAM_KEYS[model_id].items():
        assert own.get(key) == shape, key
    if model_id == "efficientvit-sam-xl0":  # XL0's stem has no ResBlock (depth 0)
        assert "image_encoder.backbone.stages.0.op_list.1.main.conv1.conv.weight" not in own
    assert not any(k.startswith(("prompt_decoder", "image_encoder.backbone.input_stem")) for k in own)


def test_upstream_checkpoint_loads_strictly(tmp_path):
    torch.manual_seed(1)
    src = edgevit.create_model("efficientvit-sam-l0")
    # As upstream saves it: a dict under "state_dict" with DataParallel's "module." prefix.
    path = tmp_path / "efficientvit_sam_l0.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    torch.manual_seed(2)
    model = edgevit.create_model("efficientvit-sam-l0", weights=path)
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("mask_decoder.iou_prediction_head")}
    sd["mask_decoder.extra_head.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(EdgevitError) as err:
        edgevit.create_model("efficientvit-sam-l0", weights=bad)
    msg = str(err.value)
    assert "\n" not in msg and "missing (mask_decoder.iou_prediction_head" in msg.replace("6 missing ", "missing ")
    assert "1 unexpected (mask_decoder.extra_head.weight)" in msg


def test_l1_checkpoint_is_refused_by_l0(tmp_path):
    path = tmp_path / "l1.pt"
    torch.save(_meta_free_state("efficientvit-sam-l1"), path)
    with pytest.raises(EdgevitError, match="does not match efficientvit-sam-l0: .*unexpected"):
        edgevit.create_model("efficientvit-sam-l0", weights=path)


def _meta_free_state(model_id: str) -> dict[str, torch.Tensor]:
    """A state dict with the model's keys and shapes (zeros; cheap enough for a load test)."""
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in _meta(model_id).state_dict().items()}


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _decoder() -> tuple[PromptEncoder, MaskDecoder]:
    torch.manual_seed(0)
    return PromptEncoder().eval(), MaskDecoder().eval()


def _slots(coords: list, labels: list, p: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    c, lab = torch.zeros(1, p, 2), -torch.ones(1, p)
    c[0, : len(coords)] = torch.tensor(coords, dtype=torch.float32)
    lab[0, : len(labels)] = torch.tensor(labels, dtype=torch.float32)
    return c, lab


@pytest.mark.parametrize("with_box,with_mask", [(False, False), (True, False), (False, True), (True, True)])
def test_static_decoder_equals_upstream_call_whatever_the_padding(with_box, with_mask):
    pe, md = _decoder()
    dec = PromptDecoder(pe, md)
    emb = torch.randn(1, 256, 64, 64)
    pts, lab = torch.tensor([[[100.0, 200.0], [640.0, 380.5]]]), torch.tensor([[1.0, 0.0]])
    box = torch.tensor([[50.0, 60.0, 700.0, 800.0]]) if with_box else None
    mask = torch.randn(1, 1, 256, 256) * 5 if with_mask else None
    with torch.inference_mode():
        sparse, dense = pe((pts, lab), box, mask)
        ref_masks, ref_iou = md.predict_all(emb, pe.get_dense_pe(), sparse, dense)
        coords, labels = pts[0].tolist(), lab[0].tolist()
        if with_box:
            coords += [[50.0, 60.0], [700.0, 800.0]]
            labels += [2, 3]
        mask_in = mask if with_mask else torch.zeros(1, 1, 256, 256)
        flag = torch.tensor([1.0 if with_mask else 0.0])
        for p in (len(coords) + (0 if with_box else 1), 16):
            masks, iou = dec(emb, *_slots(coords, labels, p), mask_in, flag)
            assert masks.shape == (1, 4, 256, 256) and iou.shape == (1, 4)
            torch.testing.assert_close(masks, ref_masks, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-4)
        # Without masking the extra padding tokens the result would change: the test can fail.
        unmasked, _ = md.predict_all(emb, pe.get_dense_pe(), pe.embed_points(*_slots(coords, labels)), dense)
        assert (unmasked - ref_masks).abs().max() > 1e-3
        multi, multi_iou = md(emb, pe.get_dense_pe(), sparse, dense, multimask_output=True)
        assert torch.equal(multi, ref_masks[:, 1:]) and torch.equal(multi_iou, ref_iou[:, 1:])


def test_decoder_graph_avoids_runtime_breaking_ops():
    pe, md = _decoder()
    rec = _OpRecorder()
    with torch.inference_mode(), rec:
        PromptDecoder(pe, md)(torch.randn(1, 256, 64, 64), *_slots([[10.0, 20.0]], [1]),
                              torch.zeros(1, 1, 256, 256), torch.zeros(1))
    assert "aten.bmm" in rec.ops or "aten.matmul" in rec.ops or "aten.mm" in rec.ops
    assert not {op for op in rec.ops if "scaled_dot_product" in op or "repeat_interleave" in op}, rec.ops


def test_l0_encoder_contract_shape():
    torch.manual_seed(0)
    model = edgevit.create_model("efficientvit-sam-l0")
    assert model.contract.image_size == 512 and model.contract.max_points == 16
    with torch.inference_mode():
        emb = model.image_encoder(torch.randn(1, 3, 512, 512))
    assert emb.shape == (1, 256, 64, 64) and torch.isfinite(emb).all()
    # Channel LayerNorm at the end: unit variance over the 256 channels at every position.
    torch.testing.assert_close(emb.var(dim=1, unbiased=False), torch.ones(1, 64, 64), atol=1e-3, rtol=0)
    d = model.contract.to_dict()
    assert d["task"] == "promptable-segmentation" and tuple(d["decoder"]["inputs"][1]["shape"]) == ("N", 16, 2)
