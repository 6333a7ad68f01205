"""Fine-tuning a registered segmentation model on a labelled dataset, reproducibly.

Recipe (as the EfficientViT papers train): AdamW (no weight decay on norms and biases), cosine learning
rate with linear warm-up, pixel-wise cross-entropy with ``ignore_index`` 255 on logits upsampled
bilinearly to the crop, BatchNorm in train mode. Augmentation on real photos: random scale, random crop
(padded with ignore), horizontal flip, mild colour jitter.

Reproducibility: which images a step sees and how they are augmented are pure functions of
``(seed, step)`` (counter-based numpy generators), the initial weights come from ``torch.manual_seed(seed)``,
and deterministic torch algorithms are requested during the run. So ``resume=True`` from ``out/last.pt``
continues exactly, and the same arguments give bit-identical weights on the same machine and thread count.

Outputs in ``out``: ``last.pt`` (model, optimizer, scheduler, step, torch RNG state, loss curve; plain
tensors and containers, loads with ``torch.load(..., weights_only=True)``), and at the end
``model.safetensors`` (weights only; float32 unless ``save_dtype="float16"``) and ``train.json``.

``finetune``'s parameters map 1:1 onto command-line flags (``--batch-size`` for ``batch_size``, ...);
see :func:`add_arguments` and ``python -m edgevit.train.finetune --help``.
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
from torch import nn

from .. import io, processing
from ..data.segmentation import IGNORE_INDEX, SegDataset, SegSample, open_segmentation_dataset
from ..errors import EdgevitError
from ..evaluate import evaluate_segmentation
from ..models.contract import SegContract
from ..models.registry import create_model, get_model_entry
from .loop import (SAVE_DTYPES, check_float, check_int, check_save_dtype, check_schedule, deterministic, make_optimizer,
                   make_scheduler, open_run, run_steps, save_checkpoint, save_weights, weights_for_saving)

WHO = "finetune"  # prefix of argument errors
CHECKPOINT_FORMAT = "edgevit.finetune"
CHECKPOINT_VERSION = 1
COLOR_JITTER = 0.2  # brightness, contrast and saturation factors drawn from U(1 - j, 1 + j)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 weights, for contrast and saturation
_CACHE_LIMIT = 100  # training sets up to this many images are kept decoded in memory (pure speed-up)


# --- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FinetuneConfig:
    """The arguments of :func:`finetune` that define a run (everything but ``resume`` and ``progress``).

    A resumed run must have the same config as the run that wrote ``last.pt``.
    """

    model_id: str
    data: str
    layout: str
    out: str
    labelset: str | None
    weights: str | None
    steps: int
    batch_size: int
    crop: int
    lr: float
    weight_decay: float
    warmup: int
    seed: int
    holdout: int
    scale: tuple[float, float]
    limit: int | None
    checkpoint_every: int
    log_every: int
    save_dtype: str
    threads: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale"] = list(self.scale)
        return d

    def command(self) -> str:
        """The shell command that runs this config: ``python -m edgevit.train.finetune ...``."""
        argv = ["python", "-m", "edgevit.train.finetune", self.model_id, "--data", self.data,
                "--layout", self.layout, "--out", self.out]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("model_id", "data", "layout", "out") or value is None:
                continue
            flag = "--" + f.name.replace("_", "-")
            argv += [flag, *map(str, value)] if isinstance(value, tuple) else [flag, str(value)]
        return shlex.join(argv)


def _validated_config(**kw: Any) -> FinetuneConfig:
    """Check every argument (one-line EdgevitError naming the argument) and freeze them into a config."""
    steps, warmup = check_schedule(WHO, kw["steps"], kw["warmup"])
    scale = kw["scale"]
    if isinstance(scale, str) or not isinstance(scale, Sequence) or len(scale) != 2:
        raise EdgevitError(f"finetune: scale must be (min, max), got {scale!r}")
    lo, hi = (check_float(WHO, "scale", s, positive=True) for s in scale)
    if lo > hi:
        raise EdgevitError(f"finetune: scale min {lo} is larger than max {hi}")
    limit = None if kw["limit"] is None else check_int(WHO, "limit", kw["limit"], 1)
    if not isinstance(kw["layout"], str):
        raise EdgevitError(f"finetune: layout must be a layout name (voc, ade20k, cityscapes, folder), got {kw['layout']!r}")
    return FinetuneConfig(
        model_id=str(kw["model_id"]), data=os.fspath(kw["data"]), layout=kw["layout"], out=os.fspath(kw["out"]),
        labelset=kw["labelset"], weights=None if kw["weights"] is None else os.fspath(kw["weights"]),
        steps=steps, batch_size=check_int(WHO, "batch_size", kw["batch_size"], 1), crop=check_int(WHO, "crop", kw["crop"], 1),
        lr=check_float(WHO, "lr", kw["lr"], positive=True),
        weight_decay=check_float(WHO, "weight_decay", kw["weight_decay"], positive=False), warmup=warmup,
        seed=check_int(WHO, "seed", kw["seed"], 0), holdout=check_int(WHO, "holdout", kw["holdout"], 0), scale=(lo, hi),
        limit=limit, checkpoint_every=check_int(WHO, "checkpoint_every", kw["checkpoint_every"], 1),
        log_every=check_int(WHO, "log_every", kw["log_every"], 1), save_dtype=check_save_dtype(WHO, kw["save_dtype"]),
        threads=check_int(WHO, "threads", kw["threads"], 1),
    )


# --- data: split, sampler, augmentation -----------------------------------------------------------
def split_holdout(n: int, holdout: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): the last ``holdout`` of ``n`` samples (in the dataset's sorted
    order) are held out and never trained on."""
    if not 0 <= holdout < n:
        raise EdgevitError(f"finetune: holdout must be 0..{n - 1} (the dataset has {n} images, at least one "
                           f"must remain for training), got {holdout}")
    return list(range(n - holdout)), list(range(n - holdout, n))


def batch_indices(train: Sequence[int], step: int, batch_size: int, seed: int) -> list[int]:
    """Dataset indices of the batch at ``step`` (0-based): consecutive slices of a stream of epochs, each
    epoch a permutation of ``train`` drawn from ``default_rng([seed, 1, epoch])``. Only ``train`` indices
    can come out, and the result depends on ``(seed, step)`` alone, which makes resuming exact."""
    n = len(train)
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, k = divmod(pos, n)
        perm = np.random.default_rng([seed, 1, epoch]).permutation(n)
        out.append(train[int(perm[k])])
    return out


def augment_rng(seed: int, step: int) -> np.random.Generator:
    """The augmentation generator of ``step``: ``default_rng([seed, 2, step])``."""
    return np.random.default_rng([seed, 2, step])


def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map ``(H, W)`` to ``size`` = (h, w); values are copied, never mixed.

    Half-pixel centres, as PIL ``NEAREST`` and torch ``"nearest-exact"``: output pixel ``(i, j)`` takes
    source ``(floor((i + 0.5) * H / h), floor((j + 0.5) * W / w))``, computed exactly in integers. Labels
    must not go through :func:`edgevit.processing.resize_bicubic`, which would blend class ids.
    """
    h_in, w_in = label.shape
    h, w = size
    rows = ((2 * np.arange(h) + 1) * h_in) // (2 * h)
    cols = ((2 * np.arange(w) + 1) * w_in) // (2 * w)
    return np.ascontiguousarray(label[rows[:, None], cols[None, :]])


def _color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast, saturation factors from U(1 - s, 1 + s), in that order; uint8 in and out."""
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3).astype(np.float32)
    x = image.astype(np.float32) * b
    mean_luma = (x @ _LUMA).mean()
    x = (x - mean_luma) * c + mean_luma
    gray = (x @ _LUMA)[..., None]
    x = (x - gray) * s + gray
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def augment(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop: int,
    scale: tuple[float, float] = (0.5, 2.0), jitter: float = COLOR_JITTER,
    mean: Sequence[float] = processing.IMAGENET_MEAN, std: Sequence[float] = processing.IMAGENET_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: uint8 image H×W×3 + label H×W → float32 3×crop×crop input, uint8 crop×crop label.

    Random scale ``s ~ U(scale)``, random ``crop``×``crop`` window of the scaled image, horizontal flip
    (p = 0.5), colour jitter, normalisation; what the window does not cover is padded (bottom/right)
    with 0 in the normalised input and 255 (ignore) in the label. The window is cut from the source
    first (``round(crop / s)`` pixels) and then resized, bicubic for the image
    (:func:`edgevit.processing.resize_bicubic`) and nearest for the label (:func:`resize_nearest`): the same
    distribution as resize-then-crop up to sub-pixel alignment, at O(crop²) cost instead of O((s·H)²).
    Random draws, in order: scale, window row, window column, flip, three jitter factors.
    """
    h, w = label.shape
    s = float(rng.uniform(*scale))
    wh, ww = min(h, max(1, round(crop / s))), min(w, max(1, round(crop / s)))
    y0, x0 = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
    oh, ow = min(crop, max(1, round(wh * s))), min(crop, max(1, round(ww * s)))
    img, lab = image[y0 : y0 + wh, x0 : x0 + ww], label[y0 : y0 + wh, x0 : x0 + ww]
    if (oh, ow) != (wh, ww):
        img, lab = processing.resize_bicubic(np.ascontiguousarray(img), (oh, ow)), resize_nearest(lab, (oh, ow))
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    img = _color_jitter(np.ascontiguousarray(img), rng, jitter)
    x = np.zeros((3, crop, crop), np.float32)
    y = np.full((crop, crop), IGNORE_INDEX, np.uint8)
    x[:, :oh, :ow] = processing.normalize(img, mean, std).transpose(2, 0, 1)
    y[:oh, :ow] = lab
    return x, y


class _SampleCache:
    """Reads training samples from a dataset, keeping small training sets decoded in memory."""

    def __init__(self, dataset: SegDataset, keep: bool):
        self.dataset, self.keep, self.samples = dataset, keep, {}

    def __getitem__(self, index: int) -> SegSample:
        if index in self.samples:
            return self.samples[index]
        sample = self.dataset[index]
        if self.keep:
            self.samples[index] = sample
        return sample


def make_batch(
    samples: Any, indices: Sequence[int], rng: np.random.Generator, crop: int, scale: tuple[float, float],
    contract: SegContract,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented batch of ``samples[i]`` for ``i`` in ``indices``: (float32 B×3×crop×crop, int64 B×crop×crop)."""
    xs, ys = [], []
    for i in indices:
        sample = samples[i]
        x, y = augment(sample.image, sample.label, rng, crop, scale, mean=contract.mean, std=contract.std)
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()


class _Subset:
    """A view of some indices of a dataset (implements :class:`~edgevit.data.segmentation.SegDataset`)."""

    def __init__(self, dataset: SegDataset, indices: Sequence[int], what: str):
        self.dataset, self.indices = dataset, list(indices)
        self.root = f"{getattr(dataset, 'root', 'dataset')} ({what}, {len(self.indices)} images)"

    @property
    def labelset(self):
        return self.dataset.labelset

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> SegSample:
        return self.dataset[self.indices[i]]


def _names(dataset: SegDataset, indices: Sequence[int]) -> list[str]:
    pairs = getattr(dataset, "pairs", None)  # names without decoding pixels
    return [pairs[i].name if pairs is not None else dataset[i].name for i in indices]


# --- optimisation ---------------------------------------------------------------------------------
def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels: logits N×C×h×w are upsampled bilinearly to the target's
    H×W; pixels labelled 255 are ignored. A batch without labelled pixels gives a zero loss (not NaN)."""
    up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    if not bool((target != IGNORE_INDEX).any()):
        return up.sum() * 0.0
    return F.cross_entropy(up, target, ignore_index=IGNORE_INDEX)


# --- the run --------------------------------------------------------------------------------------
def finetune(
    model_id: str,
    data: str | os.PathLike[str],
    layout: str,
    out: str | os.PathLike[str],
    labelset: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    steps: int = 600,
    batch_size: int = 8,
    crop: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 0.01,
    warmup: int = 30,
    seed: int = 0,
    holdout: int = 0,
    resume: bool = False,
    progress: bool = True,
    *,
    scale: tuple[float, float] = (0.5, 2.0),
    limit: int | None = None,
    checkpoint_every: int = 50,
    log_every: int = 10,
    save_dtype: str = "float32",
    threads: int = 1,
) -> dict[str, Any]:
    """Fine-tune ``model_id`` on the dataset at ``data`` (``layout``) and write the result to ``out``.

    ``labelset``/``weights``: as :func:`edgevit.create_model` (initial weights must match the model and
    label set strictly; None: random initialisation from ``seed``). ``steps`` optimizer steps of
    ``batch_size`` augmented ``crop``×``crop`` crops (``crop``: a multiple of the model's size multiple,
    32); AdamW with ``lr`` and ``weight_decay``; ``warmup`` linear warm-up steps then cosine decay to 0.
    ``holdout``: the last N images (dataset order, sorted by path) are never trained on; train.json reports
    train and held-out mIoU. ``scale``: random-scale range. ``limit``: use the first N images only.
    ``checkpoint_every``: write ``out/last.pt`` every N steps (and at the end). ``log_every``: the loss
    curve holds the mean loss of every N steps. ``save_dtype``: ``"float32"`` or ``"float16"`` storage of
    ``model.safetensors`` (half the size; train.json then also reports the float32 model's metrics).
    ``threads``: torch intra-op CPU threads during the run. It is part of the run's identity because float
    reductions may be split differently with another count; 1 (the default) is also the fastest choice on
    a shared machine, where multi-threaded kernels spend their time waiting for descheduled threads.
    ``resume``: continue the run in ``out/last.pt`` (its arguments must be the same); without it ``out``
    must not hold a run already.

    Returns the content of ``out/train.json``. Everything is validated before anything is written;
    failures raise a one-line :class:`~edgevit.errors.EdgevitError`.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    cfg = _validated_config(
        model_id=model_id, data=data, layout=layout, out=out, labelset=labelset, weights=weights, steps=steps,
        batch_size=batch_size, crop=crop, lr=lr, weight_decay=weight_decay, warmup=warmup, seed=seed,
        holdout=holdout, scale=scale, limit=limit, checkpoint_every=checkpoint_every, log_every=log_every,
        save_dtype=save_dtype, threads=threads,
    )
    entry = get_model_entry(cfg.model_id)
    multiple = entry.contract.size_multiple
    if cfg.crop % multiple:
        raise EdgevitError(f"finetune: crop must be a multiple of {multiple} for {cfg.model_id}, got {cfg.crop}")
    last, state = open_run(cfg.out, resume, cfg.to_dict(), CHECKPOINT_FORMAT, "fine-tuning")
    out_dir = last.parent

    with deterministic(cfg.threads):
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model_id, weights=cfg.weights, labelset=cfg.labelset)
        contract: SegContract = model.contract
        dataset = open_segmentation_dataset(cfg.data, cfg.layout, num_classes=contract.num_classes, limit=cfg.limit)
        train_idx, held_idx = split_holdout(len(dataset), cfg.holdout)
        optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
        scheduler = make_scheduler(optimizer, cfg.steps, cfg.warmup)
        samples = _SampleCache(dataset, keep=len(train_idx) <= _CACHE_LIMIT)

        def loss_at(step: int) -> torch.Tensor:
            x, y = make_batch(samples, batch_indices(train_idx, step, cfg.batch_size, cfg.seed),
                              augment_rng(cfg.seed, step), cfg.crop, cfg.scale, contract)
            return segmentation_loss(model(x), y)

        train_start = time.perf_counter()
        run = run_steps(
            model, optimizer, scheduler, loss_at, steps=cfg.steps, log_every=cfg.log_every,
            checkpoint_every=cfg.checkpoint_every, last=last, state=state, who=WHO, lr=cfg.lr, progress=progress,
            header={"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": cfg.to_dict()},
            save=save_checkpoint, started=started, cpu_started=cpu_started,
        )
        curve, resumed_at = run.curve, run.resumed_at
        train_seconds = time.perf_counter() - train_start

        # Weights file, then metrics of that very file as a user would load it.
        model.eval()
        dtype = SAVE_DTYPES[cfg.save_dtype]
        weights_path = out_dir / "model.safetensors"
        blob = save_weights(weights_path, weights_for_saving(model, dtype), {
            "producer": "edgevit.train.finetune", "model": cfg.model_id, "labelset": contract.labelset_name,
            "dtype": cfg.save_dtype, "steps": cfg.steps, "seed": cfg.seed,
        })
        saved = create_model(cfg.model_id, weights=weights_path, labelset=cfg.labelset)
        parts = {"train": train_idx, "holdout": held_idx}
        metrics = {k: _evaluate(saved, dataset, idx, k, progress) for k, idx in parts.items()}
        metrics_fp32 = None
        if dtype != torch.float32:
            metrics_fp32 = {k: _evaluate(model, dataset, idx, k, progress) for k, idx in parts.items()}

    wall, cpu = run.prior_wall_s + time.perf_counter() - started, run.prior_cpu_s + time.process_time() - cpu_started
    report = {
        "format": "edgevit.finetune report", "version": 1,
        "model": cfg.model_id, "labelset": contract.labelset_name,
        "args": cfg.to_dict(), "command": cfg.command(),
        "seed": cfg.seed, "steps": cfg.steps, "resumed_at_steps": resumed_at,
        "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
        "train_seconds_this_session": round(train_seconds, 2),
        "final_loss": curve[-1]["loss"], "loss_curve_every": cfg.log_every, "loss_curve": curve,
        "recipe": {
            "optimizer": "AdamW(betas=(0.9, 0.999), eps=1e-8), no weight decay on norms/biases",
            "schedule": "linear warm-up then cosine to 0, per step",
            "loss": "cross-entropy, ignore_index 255, logits upsampled bilinearly to the crop",
            "augmentation": f"random scale U{list(cfg.scale)}, random crop {cfg.crop} (pad ignore), "
                            f"hflip p=0.5, colour jitter +-{COLOR_JITTER}",
            "batchnorm": "train mode",
        },
        "data": {"root": cfg.data, "layout": cfg.layout, "images": len(dataset),
                 "train": _names(dataset, train_idx), "holdout": _names(dataset, held_idx)},
        "eval": metrics,
        "eval_float32_in_memory": metrics_fp32,
        "weights_file": {"path": str(weights_path), "dtype": cfg.save_dtype, "bytes": len(blob),
                         "sha256": hashlib.sha256(blob).hexdigest()},
        "environment": {"torch": torch.__version__, "numpy": np.__version__, "threads": cfg.threads,
                        "python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count()},
    }
    io.write_json(out_dir / "train.json", report)
    return report


def _evaluate(model: nn.Module, dataset: SegDataset, indices: list[int], what: str, progress: bool) -> dict | None:
    """``evaluate_segmentation`` on the model's own contract over ``indices`` (None when empty)."""
    if not indices:
        return None
    result = evaluate_segmentation(model, _Subset(dataset, indices, what), progress=progress)
    d = result.to_dict()
    d.pop("model_seconds_median", None)  # timing is not a property of the weights
    return d


# --- command line ---------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add :func:`finetune`'s parameters as flags (1:1: ``batch_size`` → ``--batch-size``)."""
    p.add_argument("model_id", metavar="model", help="registered model id, e.g. efficientvit-seg-b0-voc")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--layout", required=True, help="cityscapes | ade20k | voc | folder")
    p.add_argument("--out", required=True, help="run folder: last.pt, model.safetensors, train.json")
    p.add_argument("--labelset", help="train for another label set, e.g. voc")
    p.add_argument("--weights", help="initial weights (.pt / .safetensors); random init from --seed if omitted")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=256, help="square training crop (multiple of 32)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=30, help="linear warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=int, default=0, help="the last N images are never trained on")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT/last.pt")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--scale", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"))
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-dtype", choices=tuple(SAVE_DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (part of what makes a run reproducible)")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgevit.train.finetune", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = vars(p.parse_args(argv))
    args["scale"] = tuple(args["scale"])
    try:
        report = finetune(**args)
    except EdgevitError as exc:
        print(f"edgevit: error: {exc}", file=sys.stderr)
        return 2
    ev = report["eval"]
    summary = [f"{k} mIoU {100 * v['miou']:.2f} pixel acc {100 * v['pixel_accuracy']:.2f}"
               for k, v in ev.items() if v is not None]
    print(f"{report['model']}: {report['steps']} steps in {report['wall_seconds']:.0f} s, final loss "
          f"{report['final_loss']:.4f}; " + "; ".join(summary) + f"; wrote {args['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
