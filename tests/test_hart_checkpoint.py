"""Upstream HART folder loading: strict, through the declared key map.

The upstream names and shapes below are written from the upstream module structure
(mit-han-lab/hart: hart/modules/networks/basic_vae.py Encoder/Decoder, quantize/var_quantize_multiple_res.py,
models/autoencoder/hart_autoencoder_with_disc.py, networks/basic_hart.py AdaLNSelfAttn/LlamaAttention/LlamaMLP/
AdaLNBeforeHead/TimestepEmbedder, models/transformer/hart_transformer_t2i.py, diffusion/diffloss.py),
independently of edgevit's modules.
"""

import json

import pytest
import torch
from safetensors.torch import save_file

from edgevit.errors import EdgevitError
from edgevit.hart import HartModel
from edgevit.hart.checkpoint import folder_config, load_folder, save_folder
from edgevit.hart.sampler import EagerPrograms, SamplerSettings, generate

TOK = {"model_type": "hart_autoencoder_with_disc", "vocab_size": 24, "z_channels": 8, "ch": 32, "ch_mult": [1, 2],
       "quantizer_type": "var_hybrid", "hybrid": True, "share_quant_resi": 4, "quant_resi": 0.5,
       "v_patch_nums": [1, 2, 4, 8], "using_znorm": False, "beta": 0.25, "quant_conv_ks": 3}
LLM = {"model_type": "hart_transformer_t2i", "attn_type": "llama", "mlp_type": "llama", "depth": 2, "embed_dim": 32,
       "num_heads": 2, "mlp_ratio": 4.0, "context_token": 3, "context_dim": 12, "use_context_norm": True,
       "use_timestep_embed": True, "patch_nums": [1, 2, 4, 8], "diff_width": 32, "diff_depth": 2,
       "num_sampling_steps": "8", "sep_aln_pooling_mode": "max"}


def _resnet(p, cin, cout, out):
    out.update({f"{p}.norm1.weight": [cin], f"{p}.norm1.bias": [cin], f"{p}.conv1.weight": [cout, cin, 3, 3],
                f"{p}.conv1.bias": [cout], f"{p}.norm2.weight": [cout], f"{p}.norm2.bias": [cout],
                f"{p}.conv2.weight": [cout, cout, 3, 3], f"{p}.conv2.bias": [cout]})
    if cin != cout:
        out.update({f"{p}.nin_shortcut.weight": [cout, cin, 1, 1], f"{p}.nin_shortcut.bias": [cout]})


def _attn(p, c, out):
    out.update({f"{p}.norm.weight": [c], f"{p}.norm.bias": [c], f"{p}.qkv.weight": [3 * c, c, 1, 1],
                f"{p}.qkv.bias": [3 * c], f"{p}.proj_out.weight": [c, c, 1, 1], f"{p}.proj_out.bias": [c]})


def upstream_tokenizer_shapes(c=TOK) -> dict[str, list[int]]:
    ch, mult, z, nrb = c["ch"], c["ch_mult"], c["z_channels"], 2
    s: dict[str, list[int]] = {"vae.encoder.conv_in.weight": [ch, 3, 3, 3], "vae.encoder.conv_in.bias": [ch]}
    cin = ch
    for i, m in enumerate(mult):
        for j in range(nrb):
            _resnet(f"vae.encoder.down.{i}.block.{j}", cin, ch * m, s)
            cin = ch * m
            if i == len(mult) - 1:
                _attn(f"vae.encoder.down.{i}.attn.{j}", cin, s)
        if i != len(mult) - 1:
            s.update({f"vae.encoder.down.{i}.downsample.conv.weight": [cin, cin, 3, 3],
                      f"vae.encoder.down.{i}.downsample.conv.bias": [cin]})
    for part in ("encoder", "decoder"):
        top = ch * mult[-1]
        _resnet(f"vae.{part}.mid.block_1", top, top, s), _attn(f"vae.{part}.mid.attn_1", top, s)
        _resnet(f"vae.{part}.mid.block_2", top, top, s)
    s.update({"vae.encoder.norm_out.weight": [cin], "vae.encoder.norm_out.bias": [cin],
              "vae.encoder.conv_out.weight": [z, cin, 3, 3], "vae.encoder.conv_out.bias": [z],
              "vae.decoder.conv_in.weight": [ch * mult[-1], z, 3, 3], "vae.decoder.conv_in.bias": [ch * mult[-1]]})
    cin = ch * mult[-1]
    for i in reversed(range(len(mult))):
        for j in range(nrb + 1):
            _resnet(f"vae.decoder.up.{i}.block.{j}", cin, ch * mult[i], s)
            cin = ch * mult[i]
            if i == len(mult) - 1:
                _attn(f"vae.decoder.up.{i}.attn.{j}", cin, s)
        if i != 0:
            s.update({f"vae.decoder.up.{i}.upsample.conv.weight": [cin, cin, 3, 3],
                      f"vae.decoder.up.{i}.upsample.conv.bias": [cin]})
    s.update({"vae.decoder.norm_out.weight": [ch], "vae.decoder.norm_out.bias": [ch],
              "vae.decoder.conv_out.weight": [3, ch, 3, 3], "vae.decoder.conv_out.bias": [3]})
    for conv in ("quant_conv", "post_quant_conv"):
        s.update({f"vae.{conv}.weight": [z, z, 3, 3], f"vae.{conv}.bias": [z]})
    s["vae.quantize.embedding.weight"] = [c["vocab_size"], z]
    s["vae.quantize.ema_vocab_hit_SV"] = [len(c["v_patch_nums"]), c["vocab_size"]]
    for k in range(c["share_quant_resi"]):
        s.update({f"vae.quantize.quant_resi.qresi_ls.{k}.weight": [z, z, 3, 3], f"vae.quantize.quant_resi.qresi_ls.{k}.bias": [z]})
    s.update({"disc.main.0.weight": [4, 3, 3, 3], "disc.main.0.bias": [4]})  # discriminator: dropped
    return s


def upstream_llm_shapes(c=LLM, tok=TOK) -> dict[str, list[int]]:
    C, z, V, ctx, W = c["embed_dim"], tok["z_channels"], tok["vocab_size"], c["context_dim"], c["diff_width"]
    hidden = int((C * c["mlp_ratio"] * 2) / 3 + 255) // 256 * 256
    total = c["context_token"] + sum(p * p for p in c["patch_nums"][1:])
    s = {"word_embed.weight": [C, z], "word_embed.bias": [C], "context_norm.weight": [ctx],
         "context_embed.weight": [C, ctx], "context_embed.bias": [C], "lvl_embed.mlp.0.weight": [C, 256],
         "lvl_embed.mlp.0.bias": [C], "lvl_embed.mlp.2.weight": [C, C], "lvl_embed.mlp.2.bias": [C],
         "lvl_1L": [1, total], "attn_bias_for_masking": [1, 1, total, total],
         "head_nm.ln_wo_grad.weight": [C], "head_nm.ada_lin.1.weight": [2 * C, C], "head_nm.ada_lin.1.bias": [2 * C],
         "head.weight": [V, C], "head.bias": [V], "decoder_norm.weight": [C]}
    for b in range(c["depth"]):
        p = f"blocks.{b}"
        s.update({f"{p}.attn.qkv_proj.weight": [3 * C, C], f"{p}.attn.q_bias": [C], f"{p}.attn.v_bias": [C],
                  f"{p}.attn.zero_k_bias": [C], f"{p}.attn.proj.weight": [C, C], f"{p}.attn.proj.bias": [C],
                  f"{p}.ffn.gate_proj.weight": [hidden, C], f"{p}.ffn.up_proj.weight": [hidden, C],
                  f"{p}.ffn.down_proj.weight": [C, hidden], f"{p}.ln_wo_grad.weight": [C],
                  f"{p}.ada_lin.1.weight": [6 * C, C], f"{p}.ada_lin.1.bias": [6 * C]})
    d = "diffloss.net"
    s.update({f"{d}.time_embed.mlp.0.weight": [W, 256], f"{d}.time_embed.mlp.0.bias": [W],
              f"{d}.time_embed.mlp.2.weight": [W, W], f"{d}.time_embed.mlp.2.bias": [W],
              f"{d}.cond_embed.weight": [W, C], f"{d}.cond_embed.bias": [W], f"{d}.input_proj.weight": [W, z],
              f"{d}.input_proj.bias": [W], f"{d}.final_layer.linear.weight": [2 * z, W],
              f"{d}.final_layer.linear.bias": [2 * z], f"{d}.final_layer.adaLN_modulation.1.weight": [2 * W, W],
              f"{d}.final_layer.adaLN_modulation.1.bias": [2 * W]})
    for r in range(c["diff_depth"]):
        p = f"{d}.res_blocks.{r}"
        s.update({f"{p}.in_ln.weight": [W], f"{p}.in_ln.bias": [W], f"{p}.mlp.0.weight": [W, W], f"{p}.mlp.0.bias": [W],
                  f"{p}.mlp.2.weight": [W, W], f"{p}.mlp.2.bias": [W], f"{p}.adaLN_modulation.1.weight": [3 * W, W],
                  f"{p}.adaLN_modulation.1.bias": [3 * W]})
    return s


def write_upstream(folder, tok_shapes=None, llm_shapes=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    for sub, cfg, shapes in (("tokenizer", TOK, tok_shapes or upstream_tokenizer_shapes()),
                             ("llm", LLM, llm_shapes or upstream_llm_shapes())):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "config.json").write_text(json.dumps(cfg))
        save_file({k: torch.randn(v, generator=g) * 0.1 for k, v in shapes.items()}, str(folder / sub / "model.safetensors"))
    return folder


def test_upstream_folder_loads_strictly_into_our_modules(tmp_path):
    folder = write_upstream(tmp_path / "hart")
    model = load_folder(folder)
    cfg = folder_config(folder)
    assert cfg.image_size == 16 and model.transformer.prefix_len == 3
    from safetensors.torch import load_file

    llm, tok = load_file(str(folder / "llm/model.safetensors")), load_file(str(folder / "tokenizer/model.safetensors"))
    t = model.transformer
    torch.testing.assert_close(t.blocks[1].ada_lin.weight, llm["blocks.1.ada_lin.1.weight"])
    torch.testing.assert_close(t.blocks[0].norm.weight, llm["blocks.0.ln_wo_grad.weight"])
    torch.testing.assert_close(t.head_nm.ada_lin.bias, llm["head_nm.ada_lin.1.bias"])
    torch.testing.assert_close(model.diffusion.net.res_blocks[1].mlp[2].weight, llm["diffloss.net.res_blocks.1.mlp.2.weight"])
    torch.testing.assert_close(model.tokenizer.quantize.phi[2].weight, tok["vae.quantize.quant_resi.qresi_ls.2.weight"])
    torch.testing.assert_close(model.tokenizer.decoder.up[1].upsample.conv.bias, tok["vae.decoder.up.1.upsample.conv.bias"])
    ctx = torch.randn(1, 3, 12)
    cond, uncond = t.condition_from_context(ctx), t.condition_from_context(torch.zeros_like(ctx))
    out = generate(EagerPrograms(model.eval()), cond, uncond, SamplerSettings(cfg=1.5), torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 3, 16, 16) and torch.isfinite(out.images).all()


def test_missing_key_is_a_clear_error(tmp_path):
    shapes = upstream_llm_shapes()
    del shapes["blocks.1.ffn.up_proj.weight"]
    with pytest.raises(EdgevitError, match=r"1 missing \(transformer\.blocks\.1\.ffn\.up_proj\.weight\)"):
        load_folder(write_upstream(tmp_path / "hart", llm_shapes=shapes))


def test_unexpected_and_misshaped_keys_are_named(tmp_path):
    shapes = upstream_llm_shapes()
    shapes["blocks.0.attn.extra"] = [3]
    shapes["head.bias"] = [7]
    with pytest.raises(EdgevitError, match=r"unexpected \(llm/blocks\.0\.attn\.extra\).*mis-shaped \(llm/head\.bias: file \(7,\)"):
        load_folder(write_upstream(tmp_path / "hart", llm_shapes=shapes))


def test_corrupt_folders_are_clear_errors(tmp_path):
    folder = write_upstream(tmp_path / "hart")
    (folder / "llm/config.json").write_text("{not json")
    with pytest.raises(EdgevitError, match=r"config\.json: not valid JSON"):
        load_folder(folder)
    (folder / "llm/config.json").write_text(json.dumps({**LLM, "attn_type": "gpt2"}))
    with pytest.raises(EdgevitError, match="attn_type 'gpt2'"):
        load_folder(folder)
    (folder / "llm/config.json").write_text(json.dumps(LLM))
    (folder / "tokenizer/model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(EdgevitError, match="corrupted safetensors"):
        load_folder(folder)
    (folder / "tokenizer/model.safetensors").unlink()
    with pytest.raises(EdgevitError, match="no weights found"):
        load_folder(folder)
    with pytest.raises(EdgevitError, match="not a folder"):
        load_folder(tmp_path / "nowhere")


def test_save_folder_round_trip(tmp_path):
    from edgevit.hart import get_config

    torch.manual_seed(0)
    model = HartModel(get_config("hart-tiny")).eval()
    save_folder(model, tmp_path / "ours")
    back = load_folder(tmp_path / "ours")
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
