"""Small, reproducible, resumable CPU training of a HART tokenizer and a class-conditional teacher on
crops of the colour photos bundled with scikit-image (one class per photo).

Commands (re-running the same command resumes from ``OUT/last.pt``; ``tokenizer-report`` prints
held-out reconstruction PSNRs)::

    .venv/bin/python -m edgevit.hart.train tokenizer --config hart-teacher-small --out runs/hart/tokenizer --steps 3000
    .venv/bin/python -m edgevit.hart.train teacher --config hart-teacher-small \\
        --tokenizer runs/hart/tokenizer --out runs/hart/teacher --steps 3000
    .venv/bin/python -m edgevit.hart.train tokenizer-report --config hart-teacher-small --tokenizer runs/hart/tokenizer
    .venv/bin/python -m edgevit.hart.train dit --config dit-baseline-phone --tokenizer runs/hart/tokenizer \\
        --out runs/hart/dit --steps 3000

The teacher run ends by writing ``OUT/hart/`` in the upstream folder layout (llm/ + tokenizer/, see
:mod:`edgevit.hart.checkpoint`). Data: each photo is resized (bicubic) to a short side of 3 × the
image size; training crops lie left of the last ``image_size`` columns, held-out crops (for quality
proxies) inside them, so the two never overlap.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import processing
from ..errors import EdgevitError
from ..io import atomic_write
from .configs import HartConfig, get_config
from .model import HartModel

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel")


@functools.lru_cache(maxsize=4)
def _resized_photos(size: int) -> tuple[np.ndarray, ...]:
    """Each photo of ``PHOTOS`` resized (bicubic) to a short side of 3 × ``size``, uint8 H×W×3."""
    from skimage import data as skdata

    out = []
    for name in PHOTOS:
        photo = getattr(skdata, name)()
        h, w = photo.shape[:2]
        s = 3 * size / min(h, w)
        out.append(processing.resize_bicubic(photo, (round(h * s), round(w * s))))
    return tuple(out)


def photo_crops(size: int, split: str, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random size×size crops of each photo in ``PHOTOS``: images N×3×size×size float32
    in [-1, 1], labels N int64 (photo index). ``split``: "train" or "heldout" (disjoint regions)."""
    if split not in ("train", "heldout"):
        raise EdgevitError(f"photo_crops: split must be 'train' or 'heldout', got {split!r}")
    rng = np.random.default_rng(seed + (0 if split == "train" else 1000))
    images, labels = [], []
    for label, photo in enumerate(_resized_photos(size)):
        h, w = photo.shape[:2]
        x_lo, x_hi = (0, w - 2 * size) if split == "train" else (w - size, w - size)
        for _ in range(per_class):
            y, x = rng.integers(0, h - size + 1), rng.integers(x_lo, x_hi + 1)
            images.append(processing.image_to_signed(photo[y:y + size, x:x + size]))
            labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.long)


def _batch(images: torch.Tensor, labels: torch.Tensor, batch: int, gen: torch.Generator):
    idx = torch.randint(0, len(images), (batch,), generator=gen)
    x = images[idx]
    flip = torch.rand(batch, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x), labels[idx]


def _lr(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _save(path: Path, state: dict) -> None:
    with atomic_write(path) as f:
        torch.save(state, f)


def _load(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def _loop(name: str, model: HartModel, params: list, loss_fn, out: Path, steps: int, lr: float, seed: int,
          ckpt_every: int, log_every: int, extra_state: dict) -> dict:
    """Shared AdamW + warmup/cosine loop with resumable checkpoints (model, optimizer, RNG, step)."""
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)
    start, history = 0, []
    state = _load(out / "last.pt")
    if state is not None:
        if state["config"] != model.cfg.name or state["kind"] != name:
            raise EdgevitError(f"{out / 'last.pt'}: a {state['kind']} run of {state['config']}; use another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["rng"])
        start, history = state["step"], state["history"]
        print(f"[{name}] resuming at step {start}/{steps}", flush=True)
    model.train()
    t0, run = time.time(), {}
    for step in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, warmup=max(1, steps // 50))
        losses = loss_fn(gen)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        opt.step()
        for k, v in losses.items():
            run[k] = run.get(k, 0.0) + float(v.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            row = {"step": step + 1, **{k: v / log_every for k, v in run.items()}}
            history.append(row)
            run = {}
            print(f"[{name}] " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                  + f" ({time.time() - t0:.0f}s)", flush=True)
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            _save(out / "last.pt", {"kind": name, "config": model.cfg.name, "step": step + 1, "model": model.state_dict(),
                                    "opt": opt.state_dict(), "rng": gen.get_state(), "history": history, **extra_state})
    model.eval()
    return {"steps": steps, "history": history}


def train_tokenizer(config: str | HartConfig, out: str | Path, steps: int = 3000, batch: int = 16, lr: float = 1e-3,
                    seed: int = 0, per_class: int = 256, ckpt_every: int = 250, log_every: int = 50) -> Path:
    """Train the tokenizer (reconstruction MSE + VQ loss; the decoder sees continuous and discrete
    latents alternately). Writes ``out/last.pt`` and ``out/tokenizer.pt`` (tokenizer state dict)."""
    cfg = get_config(config) if isinstance(config, str) else config
    out = Path(out)
    torch.manual_seed(seed)
    model = HartModel(cfg)
    v = cfg.tokenizer.vocab_size
    with torch.no_grad():
        model.tokenizer.quantize.embedding.weight.uniform_(-1.0 / v, 1.0 / v)
    images, labels = photo_crops(cfg.image_size, "train", per_class, seed)
    tok = model.tokenizer

    def loss_fn(gen):
        x, _ = _batch(images, labels, batch, gen)
        rec, vq = tok(x, p_continuous=0.5, generator=gen)
        rec_loss = F.mse_loss(rec, x)
        return {"loss": rec_loss + vq, "rec": rec_loss, "vq": vq}

    _loop("tokenizer", model, list(tok.parameters()), loss_fn, out, steps, lr, seed, ckpt_every, log_every, {})
    _save(out / "tokenizer.pt", tok.state_dict())
    return out / "tokenizer.pt"


def _frozen_tokenizer(tokenizer_module: torch.nn.Module, tokenizer: str | Path) -> None:
    """Load the tokenizer weights of a tokenizer run (its folder or its ``tokenizer.pt``) into
    ``tokenizer_module`` and freeze it."""
    tok_path = Path(tokenizer) / "tokenizer.pt" if Path(tokenizer).is_dir() else Path(tokenizer)
    if not tok_path.is_file():
        raise EdgevitError(f"{tok_path}: tokenizer weights not found; run the tokenizer command first")
    tokenizer_module.load_state_dict(torch.load(tok_path, map_location="cpu", weights_only=True))
    tokenizer_module.requires_grad_(False).eval()


def _check_classes(name: str, cfg: HartConfig) -> None:
    """The photo crops have one class per photo: config ``name`` (whose HART config is ``cfg``) must match."""
    if cfg.transformer.num_classes != len(PHOTOS):
        raise EdgevitError(f"config {name}: num_classes {cfg.transformer.num_classes} != {len(PHOTOS)} photo classes")


@torch.no_grad()
def tokenizer_report(config: str | HartConfig, tokenizer: str | Path, per_class: int = 8, seed: int = 0) -> dict:
    """PSNR (dB, images in [-1, 1] mapped to [0, 1]) of held-out crops decoded from the continuous
    latent, from the discrete tokens only, and from discrete + residual; plus codebook usage."""
    cfg = get_config(config) if isinstance(config, str) else config
    model = HartModel(cfg).eval()
    _frozen_tokenizer(model.tokenizer, tokenizer)
    x, _ = photo_crops(cfg.image_size, "heldout", per_class, seed)
    tok = model.tokenizer
    q = tok.tokenize(x)

    def psnr(y: torch.Tensor) -> float:
        return float(10 * torch.log10(4.0 / F.mse_loss(y, x)))

    used = torch.cat(q.indices, 1).unique().numel()
    return {"images": len(x), "psnr_continuous": psnr(tok.decode(tok.encode(x))), "psnr_discrete": psnr(tok.decode(q.discrete)),
            "psnr_discrete_plus_residual": psnr(tok.decode(q.discrete + q.residual)),
            "codebook_used": used, "vocab_size": cfg.tokenizer.vocab_size}


def train_teacher(config: str | HartConfig, tokenizer: str | Path, out: str | Path, steps: int = 3000, batch: int = 16,
                  lr: float = 5e-4, seed: int = 0, per_class: int = 256, ckpt_every: int = 250,
                  log_every: int = 50) -> Path:
    """Train the class-conditional transformer + residual diffusion MLP with the tokenizer frozen.
    Writes ``out/last.pt`` and, at the end, ``out/hart/`` in the upstream folder layout."""
    from .checkpoint import save_folder

    cfg = get_config(config) if isinstance(config, str) else config
    out = Path(out)
    _check_classes(cfg.name, cfg)
    torch.manual_seed(seed)
    model = HartModel(cfg)
    _frozen_tokenizer(model.tokenizer, tokenizer)
    images, labels = photo_crops(cfg.image_size, "train", per_class, seed)
    params = [p for n, p in model.named_parameters() if not n.startswith("tokenizer.")]

    def loss_fn(gen):
        x, y = _batch(images, labels, batch, gen)
        model.tokenizer.eval()
        return model.losses(x, y, gen)

    _loop("teacher", model, params, loss_fn, out, steps, lr, seed, ckpt_every, log_every, {})
    return save_folder(model, out / "hart")


def train_dit(config: str, tokenizer: str | Path, out: str | Path, steps: int = 3000, batch: int = 16,
              lr: float = 5e-4, seed: int = 0, per_class: int = 256, ckpt_every: int = 250, log_every: int = 50) -> Path:
    """Train the DiT latent-diffusion baseline (:mod:`edgevit.hart.dit`) on the same crops, batches and
    optimizer as the teacher, in the frozen tokenizer's continuous latent space. Writes ``out/last.pt``
    (resumable) and ``out/dit.pt``."""
    from .dit import DiT, get_dit_config, save_dit

    cfg = get_dit_config(config)
    out = Path(out)
    hart = cfg.hart_config()
    _check_classes(cfg.name, hart)
    torch.manual_seed(seed)
    model = DiT(cfg)
    _frozen_tokenizer(model.tokenizer, tokenizer)
    images, labels = photo_crops(hart.image_size, "train", per_class, seed)
    with torch.no_grad():  # unit-variance latents (a fixed subset; resuming restores the same buffer)
        model.latent_scale.fill_(1.0 / float(model.tokenizer.encode(images[::8]).std()))

    def loss_fn(gen):
        x, y = _batch(images, labels, batch, gen)
        model.tokenizer.eval()
        return model.loss(x, y, gen)

    _loop("dit", model, model.generator_parameters(), loss_fn, out, steps, lr, seed, ckpt_every, log_every, {})
    return save_dit(model, out / "dit.pt")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgevit.hart.train", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("tokenizer-report")
    r.add_argument("--config", default="hart-teacher-small")
    r.add_argument("--tokenizer", required=True)
    for what in ("tokenizer", "teacher", "dit"):
        s = sub.add_parser(what)
        s.add_argument("--config", default="dit-baseline-phone" if what == "dit" else "hart-teacher-small")
        s.add_argument("--out", required=True)
        s.add_argument("--steps", type=int, default=3000)
        s.add_argument("--batch", type=int, default=16)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--threads", type=int, default=1)
        if what in ("teacher", "dit"):
            s.add_argument("--tokenizer", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(getattr(a, "threads", 1))
    try:
        if a.what == "tokenizer-report":
            print(json.dumps(tokenizer_report(a.config, a.tokenizer), indent=2))
            return 0
        if a.what == "tokenizer":
            path = train_tokenizer(a.config, a.out, a.steps, a.batch, seed=a.seed)
        elif a.what == "dit":
            path = train_dit(a.config, a.tokenizer, a.out, a.steps, a.batch, seed=a.seed)
        else:
            path = train_teacher(a.config, a.tokenizer, a.out, a.steps, a.batch, seed=a.seed)
    except EdgevitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
