"""Runners: numpy in, numpy out, timed, with the input checked against the manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..errors import EdgevitError
from ..manifest import Manifest, read_manifest


class Runner(Protocol):
    """``runner(x)``: float32 input of the manifest's shape → float32 output (e.g. N×C×H/8×W/8 logits)."""

    manifest: Manifest | None
    load_seconds: float
    last_seconds: float

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


class CheckedRunner:
    """Shared part of every artifact runner: input validation and timing. Subclasses implement ``_run``."""

    def __init__(self, manifest: Manifest, source: Path, load_seconds: float):
        self.manifest = manifest
        self.source = source
        self.load_seconds = load_seconds
        self.last_seconds = float("nan")
        spec = manifest.inputs[0]
        self.input_shape = tuple(int(d) for d in spec["shape"])
        self.input_dtype = np.dtype(spec["dtype"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.dtype != self.input_dtype or tuple(x.shape) != self.input_shape:
            got = f"{type(x).__name__} {getattr(x, 'dtype', '?')} {tuple(getattr(x, 'shape', ()))}"
            raise EdgevitError(f"{self.source}: input must be {self.input_dtype} {self.input_shape} "
                               f"(as exported), got {got}; re-export with --input-size for other sizes")
        start = time.perf_counter()
        y = self._run(np.ascontiguousarray(x))
        self.last_seconds = time.perf_counter() - start
        return y

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TorchRunner:
    """Eager PyTorch as a runner (the float reference in reports)."""

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.manifest = None
        self.load_seconds = 0.0
        self.last_seconds = float("nan")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        with torch.inference_mode():
            y = self.model(torch.from_numpy(x)).float().numpy()
        self.last_seconds = time.perf_counter() - start
        return y


def load_artifact(path: str | Path, threads: int | None = None) -> Runner:
    """Load an exported artifact through its manifest (sha256 checked) and return a runner."""
    from ..lowering.base import get_backend

    manifest, artifact = read_manifest(path)
    return get_backend(manifest.format).load(artifact, manifest, threads)
