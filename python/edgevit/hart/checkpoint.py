"""Loading upstream HART checkpoint folders unchanged, strictly, through a declared key mapping.

Folder layout (as released by mit-han-lab/hart): ``DIR/llm/`` and ``DIR/tokenizer/``, each with a
transformers-style ``config.json`` and weights (``model.safetensors``, ``pytorch_model.bin``, or shards
listed in ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``).

- ``tokenizer/config.json``: ``model_type`` "hart_autoencoder_with_disc" (weights under ``vae.``, the
  GAN discriminator under ``disc.``) or "hart_autoencoder"; keys vocab_size, z_channels, ch, ch_mult,
  beta, quant_conv_ks, quant_resi, share_quant_resi, default_qresi_counts, v_patch_nums,
  quantizer_type (must be "var_hybrid"), using_znorm (must be false). Upstream fixes
  num_res_blocks = 2, self-attention in the last level and the middle, GroupNorm(32).
- ``llm/config.json``: ``model_type`` "hart_transformer_t2i" with attn_type = mlp_type = "llama";
  keys depth, embed_dim, num_heads, mlp_ratio, norm_eps, attn_l2_norm, use_timestep_embed,
  context_token, context_dim, use_context_norm, context_norm_scale, patch_nums, diff_width,
  diff_depth, num_sampling_steps, diffusion_batch_mul, sep_aln_pooling_mode (must be "max").
  "hart_transformer_c2i" is read the same way with ``num_classes`` and a VAR-style ``class_emb``
  table (upstream publishes no HART C2I module; this is the layout our own teachers are saved in).

Keys that upstream hard-codes but our small configs change (tokenizer: num_res_blocks, norm_groups,
using_sa, using_mid_sa; llm: ffn_multiple) are read when present, with the upstream values as
defaults; :func:`save_folder` writes them.

Every tensor of the model must come from the folder with its exact shape and every tensor in the
folder must be used, except the declared ``DROPPED`` ones (buffers we recompute, the discriminator,
HART's duplicate second decoder).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .. import io
from ..errors import EdgevitError
from ..models.checkpoint import read_state_dict
from .configs import DiffusionConfig, HartConfig, TokenizerConfig, TransformerConfig
from .model import HartModel

# (pattern, replacement) applied in order to upstream names; see module docstring.
TOKENIZER_KEYMAP: tuple[tuple[str, str], ...] = (
    (r"^vae\.", ""),
    (r"^quantize\.quant_resi\.qresi_ls\.(\d+)\.", r"quantize.phi.\1."),  # partially shared phi
    (r"^quantize\.quant_resi\.qresi\.", "quantize.phi.0."),  # one shared phi
    (r"^quantize\.quant_resi\.(\d+)\.", r"quantize.phi.\1."),  # one phi per scale
    (r"^", "tokenizer."),
)
LLM_KEYMAP: tuple[tuple[str, str], ...] = (
    (r"^diffloss\.net\.", "diffusion.net."),
    (r"^blocks\.(\d+)\.ln_wo_grad\.", r"blocks.\1.norm."),
    (r"^(blocks\.\d+|head_nm)\.ada_lin\.1\.", r"\1.ada_lin."),
    (r"^head_nm\.ln_wo_grad\.", "head_nm.norm."),
    (r"^class_emb\.", "class_embed."),
    (r"^(?!diffusion\.)", "transformer."),
)
DROPPED: tuple[str, ...] = (
    r"^disc\.", r"^vae\.(decoder2|post_quant_conv2)\.", r"^(vae\.)?quantize\.ema_vocab_hit_SV$",
    r"^attn_bias_for_masking$", r"^lvl_1L$", r"^blocks\.\d+\.attn\.zero_k_bias$",
)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _map(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _read_json(path: Path) -> dict:
    return io.read_json_object(path, "an upstream HART folder has llm/config.json and tokenizer/config.json",
                               "fix or replace the file")


def _get(cfg: dict, key: str, path: Path, default: object = KeyError) -> object:
    if key in cfg:
        return cfg[key]
    if default is KeyError:
        raise EdgevitError(f"{path}: required key {key!r} is missing")
    return default


def _require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise EdgevitError(f"{path}: unsupported upstream setting: {what}")


def tokenizer_config(path: Path) -> TokenizerConfig:
    c = _read_json(path)
    _require(c.get("quantizer_type", "var") == "var_hybrid", path, f"quantizer_type {c.get('quantizer_type', 'var')!r} (need 'var_hybrid')")
    _require(not c.get("using_znorm", False), path, "using_znorm true")
    pns = tuple(int(p) for p in _get(c, "v_patch_nums", path))
    share = int(c.get("share_quant_resi", 4))
    if share == 0:
        share = int(c.get("default_qresi_counts", 0) or 0) or len(pns)
    return TokenizerConfig(
        vocab_size=int(_get(c, "vocab_size", path)), z_channels=int(_get(c, "z_channels", path)),
        ch=int(_get(c, "ch", path)), ch_mult=tuple(int(m) for m in _get(c, "ch_mult", path)),
        num_res_blocks=int(c.get("num_res_blocks", 2)), using_sa=bool(c.get("using_sa", True)),
        using_mid_sa=bool(c.get("using_mid_sa", True)), norm_groups=int(c.get("norm_groups", 32)),
        quant_conv_ks=int(c.get("quant_conv_ks", 3)), quant_resi=float(c.get("quant_resi", 0.5)),
        share_quant_resi=share, beta=float(c.get("beta", 0.25)), patch_nums=pns,
    )


def transformer_configs(path: Path) -> tuple[TransformerConfig, DiffusionConfig, tuple[int, ...]]:
    c = _read_json(path)
    kind = c.get("model_type")
    _require(kind in ("hart_transformer_t2i", "hart_transformer_c2i"), path, f"model_type {kind!r}")
    for key, want in (("attn_type", "llama"), ("mlp_type", "llama"), ("sep_aln_pooling_mode", "max")):
        _require(c.get(key, want) == want, path, f"{key} {c.get(key)!r} (need {want!r})")
    for key in ("disable_aln", "shared_aln", "use_cross_attn"):
        _require(not c.get(key, False), path, f"{key} true")
    t2i = kind == "hart_transformer_t2i"
    tcfg = TransformerConfig(
        depth=int(_get(c, "depth", path)), embed_dim=int(_get(c, "embed_dim", path)),
        num_heads=int(_get(c, "num_heads", path)), mlp_ratio=float(c.get("mlp_ratio", 4.0)),
        ffn_multiple=int(c.get("ffn_multiple", 256)),
        norm_eps=float(c.get("norm_eps", 1e-6)), attn_l2_norm=bool(c.get("attn_l2_norm", False)),
        use_timestep_embed=bool(c.get("use_timestep_embed", False)),
        num_classes=0 if t2i else int(_get(c, "num_classes", path)),
        context_dim=int(_get(c, "context_dim", path)) if t2i else 0,
        context_tokens=int(_get(c, "context_token", path)) if t2i else 1,
        use_context_norm=bool(c.get("use_context_norm", False)), context_norm_scale=float(c.get("context_norm_scale", 1.0)),
        cond_drop_rate=float(c.get("cond_drop_rate", 0.1)),
    )
    steps = str(c.get("num_sampling_steps", "8"))
    _require(steps.isdigit(), path, f"num_sampling_steps {steps!r} (need an integer)")
    dcfg = DiffusionConfig(width=int(c.get("diff_width", 1024)), depth=int(c.get("diff_depth", 6)),
                           sample_steps=int(steps), batch_mul=int(c.get("diffusion_batch_mul", 4)))
    return tcfg, dcfg, tuple(int(p) for p in _get(c, "patch_nums", path))


def folder_config(folder: str | Path) -> HartConfig:
    """The :class:`HartConfig` described by an upstream folder's two config.json files."""
    folder = Path(folder)
    tok = tokenizer_config(folder / "tokenizer" / "config.json")
    tcfg, dcfg, pns = transformer_configs(folder / "llm" / "config.json")
    if pns != tok.patch_nums:
        raise EdgevitError(f"{folder}: llm patch_nums {list(pns)} differ from tokenizer v_patch_nums {list(tok.patch_nums)}")
    extra = _read_json(folder / "edgevit.json") if (folder / "edgevit.json").is_file() else {}
    return HartConfig(name=f"upstream:{folder.name}", image_size=tok.patch_nums[-1] * tok.downsample,
                      tokenizer=tok, transformer=tcfg, diffusion=dcfg,
                      guidance_distilled=float(extra.get("guidance_distilled", 0.0)))


def read_folder_weights(sub: Path) -> dict[str, torch.Tensor]:
    """All tensors of one sub-folder (``llm`` or ``tokenizer``): a single weights file or shards."""
    for name in _INDEX_FILES:
        if (sub / name).is_file():
            files = sorted(set(_read_json(sub / name).get("weight_map", {}).values()))
            if not files:
                raise EdgevitError(f"{sub / name}: empty weight_map")
            out: dict[str, torch.Tensor] = {}
            for f in files:
                out.update(read_state_dict(sub / f))
            return out
    for name in _WEIGHT_FILES:
        if (sub / name).is_file():
            return read_state_dict(sub / name)
    raise EdgevitError(f"{sub}: no weights found (expected one of {', '.join(_WEIGHT_FILES + _INDEX_FILES)})")


def _summary(label: str, items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit]) + (f", ... and {len(items) - limit} more" if len(items) > limit else "")
    return f"{len(items)} {label} ({shown})"


def load_folder(folder: str | Path, model: HartModel | None = None) -> HartModel:
    """Build the model described by ``folder`` (or use ``model``) and load both sub-folders strictly.

    Raises :class:`EdgevitError` naming the folder and listing missing, unexpected (after the declared
    drops) and mis-shaped tensors, by their upstream and our names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgevitError(f"{folder}: not a folder; pass the HART checkpoint folder holding llm/ and tokenizer/")
    model = model or HartModel(folder_config(folder))
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for sub, rules in (("tokenizer", TOKENIZER_KEYMAP), ("llm", LLM_KEYMAP)):
        for key, tensor in read_folder_weights(folder / sub).items():
            if any(re.search(p, key) for p in DROPPED):
                continue
            ours = _map(key, rules)
            mapped[ours], source[ours] = tensor, f"{sub}/{key}"
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = [source[k] for k in mapped if k not in own]
    mis = [f"{source[k]}: file {tuple(mapped[k].shape)} vs model {tuple(v.shape)}"
           for k, v in own.items() if k in mapped and mapped[k].shape != v.shape]
    problems = [_summary(lbl, items) for lbl, items in (("missing", missing), ("unexpected", unexpected),
                                                        ("mis-shaped", mis)) if items]
    if problems:
        raise EdgevitError(f"{folder}: does not match its config.json: " + "; ".join(problems))
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(mapped[k].to(v.dtype))
    return model


def _inverse_tokenizer_key(key: str, share: int, n_scales: int) -> str:
    key = re.sub(r"^tokenizer\.", "vae.", key)
    if share == 1:
        return re.sub(r"^vae\.quantize\.phi\.0\.", "vae.quantize.quant_resi.qresi.", key)
    if share == n_scales:
        return re.sub(r"^vae\.quantize\.phi\.(\d+)\.", r"vae.quantize.quant_resi.\1.", key)
    return re.sub(r"^vae\.quantize\.phi\.(\d+)\.", r"vae.quantize.quant_resi.qresi_ls.\1.", key)


def _inverse_llm_key(key: str) -> str:
    if key.startswith("diffusion.net."):
        return "diffloss.net." + key[len("diffusion.net."):]
    key = key[len("transformer."):]
    key = re.sub(r"^(blocks\.\d+|head_nm)\.ada_lin\.", r"\1.ada_lin.1.", key)
    key = re.sub(r"^(blocks\.\d+|head_nm)\.norm\.", r"\1.ln_wo_grad.", key)
    return re.sub(r"^class_embed\.", "class_emb.", key)


def save_folder(model: HartModel, folder: str | Path) -> Path:
    """Write ``model`` in the upstream folder layout (safetensors + config.json per sub-folder), so
    :func:`load_folder` (and the distillation command) read it back. Written to a temporary folder
    and renamed into place."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    folder = Path(folder)
    cfg, tok, t, d = model.cfg, model.cfg.tokenizer, model.cfg.transformer, model.cfg.diffusion
    share = tok.share_quant_resi or len(tok.patch_nums)
    tok_json = {
        "model_type": "hart_autoencoder_with_disc", "quantizer_type": "var_hybrid", "hybrid": True,
        "vocab_size": tok.vocab_size, "z_channels": tok.z_channels, "ch": tok.ch, "ch_mult": list(tok.ch_mult),
        "beta": tok.beta, "using_znorm": False, "quant_conv_ks": tok.quant_conv_ks, "quant_resi": tok.quant_resi,
        "share_quant_resi": 0 if share == len(tok.patch_nums) else share, "default_qresi_counts": 0,
        "v_patch_nums": list(tok.patch_nums), "num_res_blocks": tok.num_res_blocks, "norm_groups": tok.norm_groups,
        "using_sa": tok.using_sa, "using_mid_sa": tok.using_mid_sa,
    }
    llm_json = {
        "model_type": "hart_transformer_c2i" if t.num_classes > 0 else "hart_transformer_t2i",
        "attn_type": "llama", "mlp_type": "llama", "depth": t.depth, "embed_dim": t.embed_dim,
        "num_heads": t.num_heads, "mlp_ratio": t.mlp_ratio, "ffn_multiple": t.ffn_multiple, "norm_eps": t.norm_eps,
        "attn_l2_norm": t.attn_l2_norm, "use_timestep_embed": t.use_timestep_embed, "patch_nums": list(tok.patch_nums),
        "cond_drop_rate": t.cond_drop_rate, "diff_width": d.width, "diff_depth": d.depth,
        "num_sampling_steps": str(d.sample_steps), "diffusion_batch_mul": d.batch_mul, "sampler": "iddpm",
        "sep_aln_pooling_mode": "max",
        **({"num_classes": t.num_classes} if t.num_classes > 0 else
           {"context_token": t.context_tokens, "context_dim": t.context_dim, "use_context_norm": t.use_context_norm,
            "context_norm_scale": t.context_norm_scale}),
    }
    tensors: dict[str, dict[str, torch.Tensor]] = {"tokenizer": {}, "llm": {}}
    for k, v in model.state_dict().items():
        if k.startswith("tokenizer."):
            tensors["tokenizer"][_inverse_tokenizer_key(k, share, len(tok.patch_nums))] = v.contiguous()
        else:
            tensors["llm"][_inverse_llm_key(k)] = v.contiguous()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    for sub, js in (("tokenizer", tok_json), ("llm", llm_json)):
        (tmp / sub).mkdir()
        (tmp / sub / "config.json").write_text(json.dumps(js, indent=2) + "\n")
        save_file(tensors[sub], str(tmp / sub / "model.safetensors"))
    extra = {"config": cfg.name, "image_size": cfg.image_size, "guidance_distilled": cfg.guidance_distilled}
    (tmp / "edgevit.json").write_text(json.dumps(extra) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
