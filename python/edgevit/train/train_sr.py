"""Training a registered super-resolution model from scratch on HR photos, reproducibly.

Recipe: random HR crops of ``patch·scale`` pixels with a random flip/rotation (8 dihedral), LR made by
MATLAB-style antialiased bicubic downscaling (:func:`edgevit.processing.resize_matlab`, how the benchmarks
make theirs), L1 loss on the output in [0, 1] (unclamped in train mode), AdamW (no weight decay on biases),
linear warm-up then cosine decay to 0.

Reproducibility as :mod:`edgevit.train.finetune` (both run on :mod:`edgevit.train.loop`): the images and crops of a step are pure functions of
``(seed, step)``, initial weights come from ``torch.manual_seed(seed)``, deterministic torch algorithms and
``threads`` intra-op threads are set during the run, so ``resume=True`` from ``out/last.pt`` continues
exactly. Outputs in ``out``: ``last.pt``, ``model.safetensors`` (float32 or float16) and ``train.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import io
from ..errors import EdgevitError
from ..models.registry import create_model, get_model_entry
from ..models.sr_common import SRContract
from ..sr.data import load_training_images, prepare_pairs, random_pair
from .loop import (SAVE_DTYPES, check_float, check_int, check_save_dtype, check_schedule, deterministic, make_optimizer,
                   make_scheduler, open_run, run_steps, save_checkpoint, save_weights, weights_for_saving)

WHO = "train-sr"  # prefix of argument errors
CHECKPOINT_FORMAT = "edgevit.train_sr"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainSRConfig:
    """The arguments of :func:`train_sr` that define a run (all but ``resume``/``progress``/``eval_data``)."""

    model_id: str
    scale: int
    data: str
    out: str
    steps: int
    batch_size: int
    patch: int
    lr: float
    weight_decay: float
    warmup: int
    seed: int
    checkpoint_every: int
    log_every: int
    save_dtype: str
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def command(self) -> str:
        """The shell command that runs this config: ``edgevit train-sr ...``."""
        argv = ["edgevit", "train-sr"]
        for f in fields(self):
            argv += ["--" + ("model" if f.name == "model_id" else f.name.replace("_", "-")), str(getattr(self, f.name))]
        return shlex.join(argv)


def _validated(**kw: Any) -> TrainSRConfig:
    entry = get_model_entry(str(kw["model_id"]))
    if not isinstance(entry.contract, SRContract):
        raise EdgevitError(f"train-sr: {kw['model_id']} is a {entry.contract.task} model, not super-resolution")
    scale = check_int(WHO, "scale", kw["scale"], 2)
    if scale != entry.contract.scale:
        raise EdgevitError(f"train-sr: {kw['model_id']} upscales x{entry.contract.scale}, not x{scale}; pick the "
                           f"x{scale} model id")
    steps, warmup = check_schedule(WHO, kw["steps"], kw["warmup"])
    data = kw["data"] if isinstance(kw["data"], str) else ",".join(map(os.fspath, kw["data"]))
    return TrainSRConfig(
        model_id=entry.id, scale=scale, data=data, out=os.fspath(kw["out"]), steps=steps,
        batch_size=check_int(WHO, "batch_size", kw["batch_size"], 1), patch=check_int(WHO, "patch", kw["patch"], 4),
        lr=check_float(WHO, "lr", kw["lr"], True), weight_decay=check_float(WHO, "weight_decay", kw["weight_decay"], False),
        warmup=warmup, seed=check_int(WHO, "seed", kw["seed"], 0), checkpoint_every=check_int(WHO, "checkpoint_every", kw["checkpoint_every"], 1),
        log_every=check_int(WHO, "log_every", kw["log_every"], 1), save_dtype=check_save_dtype(WHO, kw["save_dtype"]), threads=check_int(WHO, "threads", kw["threads"], 1),
    )


def make_batch(pairs: Sequence[tuple[np.ndarray, np.ndarray]], step: int, cfg: TrainSRConfig
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of ``step``: (LR float32 B×3×p×p, HR float32 B×3×(s·p)×(s·p)), from ``default_rng([seed, 3, step])``:
    per sample an image index (uniform over :func:`edgevit.sr.data.prepare_pairs`), then ``random_pair``'s draws."""
    rng = np.random.default_rng([cfg.seed, 3, step])
    pairs = [random_pair(*pairs[int(rng.integers(len(pairs)))], rng, cfg.scale, cfg.patch) for _ in range(cfg.batch_size)]
    return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))


def train_sr(
    model_id: str, scale: int, data: str | Sequence[str], out: str | os.PathLike[str], steps: int = 3000,
    batch_size: int = 16, patch: int = 32, lr: float = 2e-3, weight_decay: float = 1e-4, warmup: int = 100,
    seed: int = 0, resume: bool = False, progress: bool = True, *, checkpoint_every: int = 250,
    log_every: int = 50, save_dtype: str = "float32", threads: int = 1,
    eval_data: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train ``model_id`` (an ×``scale`` SR model) from random init on the HR photos of ``data`` into ``out``.

    ``data``: comma-separated ``skimage`` and/or image folders (:func:`edgevit.sr.data.load_training_images`);
    never put the evaluation sets (Set5/Set14) in it. ``patch``: LR crop side (HR crop ``patch·scale``).
    ``eval_data``: optionally an SR benchmark folder (``HR/`` [+ ``LR_bicubic/X{s}``]) scored at the end
    (train.json ``eval``). Other parameters as :func:`edgevit.train.finetune.finetune`. Returns train.json.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    cfg = _validated(model_id=model_id, scale=scale, data=data, out=out, steps=steps, batch_size=batch_size,
                     patch=patch, lr=lr, weight_decay=weight_decay, warmup=warmup, seed=seed,
                     checkpoint_every=checkpoint_every, log_every=log_every, save_dtype=save_dtype, threads=threads)
    last, state = open_run(cfg.out, resume, cfg.to_dict(), CHECKPOINT_FORMAT, "training")
    out_dir = last.parent
    images = load_training_images(cfg.data)
    pairs = prepare_pairs(images, cfg.scale, cfg.patch * cfg.scale)

    with deterministic(cfg.threads):
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model_id)
        optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
        scheduler = make_scheduler(optimizer, cfg.steps, cfg.warmup)

        def loss_at(step: int) -> torch.Tensor:
            lr_img, hr_img = make_batch(pairs, step, cfg)
            return F.l1_loss(model(lr_img), hr_img)

        run = run_steps(
            model, optimizer, scheduler, loss_at, steps=cfg.steps, log_every=cfg.log_every,
            checkpoint_every=cfg.checkpoint_every, last=last, state=state, who=WHO, lr=cfg.lr, progress=progress,
            header={"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": cfg.to_dict()},
            save=save_checkpoint, started=started, cpu_started=cpu_started, digits=4,
        )
        curve, resumed_at = run.curve, run.resumed_at
        model.eval()
        weights_path = out_dir / "model.safetensors"
        blob = save_weights(weights_path, weights_for_saving(model, SAVE_DTYPES[cfg.save_dtype]), {
            "producer": "edgevit.train.train_sr", "model": cfg.model_id, "dtype": cfg.save_dtype,
            "steps": cfg.steps, "seed": cfg.seed,
        })
        metrics = None
        if eval_data is not None:
            from ..sr.evaluate import evaluate_sr

            saved = create_model(cfg.model_id, weights=weights_path)
            metrics = evaluate_sr(saved, eval_data, cfg.scale, progress=False).to_dict()

    wall, cpu = run.prior_wall_s + time.perf_counter() - started, run.prior_cpu_s + time.process_time() - cpu_started
    report = {
        "format": "edgevit.train_sr report", "version": 1, "model": cfg.model_id, "args": cfg.to_dict(),
        "command": cfg.command(), "steps": cfg.steps, "resumed_at_steps": resumed_at,
        "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "final_loss": curve[-1]["loss"],
        "loss_curve_every": cfg.log_every, "loss_curve": curve,
        "recipe": {"optimizer": "AdamW(betas=(0.9, 0.999), eps=1e-8), no weight decay on biases",
                   "schedule": "linear warm-up then cosine to 0, per step", "loss": "L1 on RGB in [0, 1]",
                   "data": f"random aligned {cfg.patch * cfg.scale}px HR / {cfg.patch}px LR crops of the mod-cropped photos "
                           "and their MATLAB-bicubic downscale, 8 flips/rotations"},
        "data": {"spec": cfg.data, "images": [n for n, _ in images], "pairs_used": len(pairs)},
        "eval": metrics,
        "weights_file": {"path": str(weights_path), "dtype": cfg.save_dtype, "bytes": len(blob),
                         "sha256": hashlib.sha256(blob).hexdigest()},
        "environment": {"torch": torch.__version__, "numpy": np.__version__, "threads": cfg.threads,
                        "python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count()},
    }
    io.write_json(out_dir / "train.json", report)
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    """:func:`train_sr`'s parameters as flags (``batch_size`` → ``--batch-size``, ``model_id`` → ``--model``)."""
    p.add_argument("--model", dest="model_id", required=True, help="SR model id, e.g. efficientvit-sr-s-x2")
    p.add_argument("--scale", type=int, required=True, choices=(2, 4))
    p.add_argument("--data", required=True, help="comma-separated: 'skimage' (bundled photos) and/or image folders")
    p.add_argument("--out", required=True, help="run folder: last.pt, model.safetensors, train.json")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patch", type=int, default=32, help="LR crop side (HR crop is patch x scale)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in OUT/last.pt")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-dtype", choices=tuple(SAVE_DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-data", help="SR benchmark folder (HR/, LR_bicubic/) scored at the end, e.g. Set5")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgevit.train.train_sr", description=__doc__.splitlines()[0])
    add_arguments(p)
    try:
        report = train_sr(**vars(p.parse_args(argv)))
    except EdgevitError as exc:
        print(f"edgevit: error: {exc}", file=sys.stderr)
        return 2
    print(f"{report['model']}: {report['steps']} steps in {report['wall_seconds']:.0f} s, final L1 {report['final_loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
