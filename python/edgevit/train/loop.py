"""The training scaffold shared by :mod:`edgevit.train.finetune` and :mod:`edgevit.train.train_sr`.

Argument checks (one-line :class:`EdgevitError` naming the argument), the run folder rules (``out/last.pt``,
resume only with the same arguments), AdamW + linear warm-up + cosine, deterministic torch settings, atomic
checkpoints and safetensors weights, and the step loop itself (loss curve, checkpoints, progress bar).

Resuming is exact: the loop restores model, optimizer, scheduler, torch RNG, the loss curve and the
partial logging window from ``last.pt``; the caller's batches must be pure functions of ``(seed, step)``.
"""

from __future__ import annotations

import io as _bytes_io
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import io
from ..errors import EdgevitError

SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


# --- argument checks ------------------------------------------------------------------------------
def check_int(who: str, name: str, value: object, low: int) -> int:
    """``value`` as an int >= ``low``; else ``EdgevitError("<who>: <name> must be ...")``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise EdgevitError(f"{who}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_float(who: str, name: str, value: object, positive: bool) -> float:
    """``value`` as a finite float, > 0 if ``positive`` else >= 0."""
    ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise EdgevitError(f"{who}: {name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def check_schedule(who: str, steps: object, warmup: object) -> tuple[int, int]:
    """(steps >= 1, 0 <= warmup <= steps)."""
    steps_, warmup_ = check_int(who, "steps", steps, 1), check_int(who, "warmup", warmup, 0)
    if warmup_ > steps_:
        raise EdgevitError(f"{who}: warmup ({warmup_}) must not exceed steps ({steps_})")
    return steps_, warmup_


def check_save_dtype(who: str, value: object) -> str:
    if value not in SAVE_DTYPES:
        raise EdgevitError(f"{who}: save_dtype must be one of {', '.join(SAVE_DTYPES)}, got {value!r}")
    return str(value)


# --- run folder and checkpoints -------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plain tensors and containers) with ``torch.save``, atomically."""
    buf = _bytes_io.BytesIO()
    torch.save(state, buf)
    with io.atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def load_checkpoint(path: Path, fmt: str, what: str) -> dict[str, Any]:
    """Read a ``last.pt`` written by :func:`save_checkpoint` (``weights_only=True``) whose ``format`` is
    ``fmt``; ``what`` names the kind of run in the error ("fine-tuning", "train-sr")."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise EdgevitError(f"{path}: not a readable checkpoint ({first}); delete it and start over") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise EdgevitError(f"{path}: not an edgevit {what} checkpoint; delete it or choose another out folder")
    return state


def open_run(out: str, resume: bool, config: dict[str, Any], fmt: str, what: str) -> tuple[Path, dict[str, Any] | None]:
    """Check the run folder ``out`` before anything is written: (path of ``last.pt``, its state when
    resuming, else None). A new run needs a folder without a run; resuming needs ``last.pt`` written with
    the same ``config``."""
    out_dir = Path(out)
    last = out_dir / "last.pt"
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgevitError(f"{out_dir}: out is a file; pass a folder for the run")
    if resume and not last.is_file():
        raise EdgevitError(f"{last}: no checkpoint to resume from; drop resume to start a new run")
    if not resume and (last.exists() or (out_dir / "model.safetensors").exists()):
        raise EdgevitError(f"{out_dir}: already holds a {what} run; pass resume to continue it or choose another "
                           "out folder")
    state = load_checkpoint(last, fmt, what) if resume else None
    if state is not None and state["config"] != config:
        old = state["config"]
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in config.items() if old.get(k) != v]
        raise EdgevitError(f"{last}: was written with other arguments ({'; '.join(diff)}); use the same "
                           "arguments to resume, or another out folder for a new run")
    return last, state


def weights_for_saving(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's state dict with floating tensors cast to ``dtype`` (integer BN counters kept)."""
    return {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().clone()
            for k, v in model.state_dict().items()}


def save_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> bytes:
    """Write ``tensors`` as safetensors, atomically; returns the bytes written.

    ``metadata`` is stored as one JSON string (sorted keys) under the key ``"edgevit"``: safetensors
    writes several metadata keys in a random order, which would make identical weights differ in bytes.
    """
    from safetensors.torch import save

    blob = save(tensors, metadata={"edgevit": json.dumps(metadata, sort_keys=True)})
    with io.atomic_write(path, "wb") as f:
        f.write(blob)
    return blob


# --- optimisation ---------------------------------------------------------------------------------
def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; weight decay on conv weights only (parameters with ndim > 1), not on norm scales or biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up ``(step + 1) / warmup`` for the first
    ``warmup`` steps, then cosine decay from 1 to 0 over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def make_scheduler(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps, warmup))


@contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Request deterministic torch algorithms and ``threads`` intra-op threads for the duration; restores the
    caller's settings and torch RNG afterwards."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    old_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


# --- the step loop --------------------------------------------------------------------------------
@dataclass
class LoopResult:
    """What a (possibly resumed) run did: the mean-loss curve, the steps it was resumed at, and the wall/CPU
    seconds of the earlier sessions (add this session's own to report totals)."""

    curve: list[dict[str, float]] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)
    prior_wall_s: float = 0.0
    prior_cpu_s: float = 0.0


def run_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_at: Callable[[int], torch.Tensor], *, steps: int, log_every: int, checkpoint_every: int, last: Path,
    header: dict[str, Any], state: dict[str, Any] | None, who: str, lr: float, progress: bool,
    save: Callable[[Path, dict[str, Any]], None], started: float, cpu_started: float, digits: int = 3,
) -> LoopResult:
    """Train ``model`` (in train mode) from step 0, or from ``state`` (a ``last.pt``) when resuming, to ``steps``.

    ``loss_at(step)``: the scalar loss of batch ``step`` (0-based), a pure function of the step. The loss
    curve holds the mean loss of every ``log_every`` steps (and of the last ones); ``last`` is written with
    ``save`` every ``checkpoint_every`` steps and at the end: ``header`` (format, version, config) plus the
    loop state. ``started``/``cpu_started``: ``perf_counter``/``process_time`` when this session began.
    A non-finite loss raises EdgevitError (``who``: the command's name in the message).
    """
    step, curve, window, elapsed, cpu, resumed_at = 0, [], [], 0.0, 0.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, curve, window = int(state["step"]), list(state["loss_curve"]), list(state["window"])
        elapsed, cpu, resumed_at = float(state["elapsed_s"]), float(state["cpu_s"]), [*state["resumed_at"], step]
    last.parent.mkdir(parents=True, exist_ok=True)

    model.train()
    bar = tqdm(total=steps, initial=step, desc=who, unit="step", disable=not progress)
    while step < steps:
        lr_now = optimizer.param_groups[0]["lr"]
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        window.append(float(loss.item()))
        if not math.isfinite(window[-1]):
            raise EdgevitError(f"{who}: loss became {window[-1]} at step {step}; lower lr (now {lr})")
        if step % log_every == 0 or step == steps:
            curve.append({"step": step, "loss": float(np.mean(window)), "lr": lr_now})
            window = []
        if step % checkpoint_every == 0 or step == steps:
            save(last, {
                **header, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "loss_curve": curve,
                "window": window, "elapsed_s": elapsed + time.perf_counter() - started,
                "cpu_s": cpu + time.process_time() - cpu_started, "resumed_at": resumed_at,
            })
        bar.update(1)
        bar.set_postfix(loss=f"{window[-1] if window else curve[-1]['loss']:.{digits}f}", lr=f"{lr_now:.2e}")
    bar.close()
    return LoopResult(curve, resumed_at, elapsed, cpu)
