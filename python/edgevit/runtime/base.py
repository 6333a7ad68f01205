"""Runners: numpy in, numpy out, timed, with the inputs checked against the manifest.

Every runner has two entry points: ``runner.run({name: array, ...}) -> {name: array, ...}`` for any
artifact (inputs and outputs named as in the manifest, outputs in the manifest's order), and the shortcut
``runner(x) -> y`` for artifacts with one input and one output (a segmentation image → logits).
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..errors import EdgevitError
from ..lowering.base import IOSpec, describe_array
from ..manifest import Manifest, read_manifest


class Runner(Protocol):
    """``run(inputs)``: ``{name: array}`` of the manifest's input names, dtypes and shapes → ``{name: array}``
    for every output (manifest order). ``runner(x)``: the same for a one-input, one-output artifact (e.g.
    float32 1×3×H×W image → N×C×H/8×W/8 logits). ``last_seconds``: wall time of the last call."""

    manifest: Manifest | None
    load_seconds: float
    last_seconds: float

    def __call__(self, x: np.ndarray) -> np.ndarray: ...

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _unknown_names(source: object, given: Sequence[str], names: Sequence[str]) -> str:
    """Error text for input names that are missing or not known."""
    unknown = [n for n in given if n not in names]
    missing = [n for n in names if n not in given]
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        parts.append(f"unknown input {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if missing:
        parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
    return f"{source}: {'; '.join(parts)}; the artifact takes {', '.join(map(repr, names))}"


def _check_mapping(source: object, inputs: object, names: Sequence[str]) -> None:
    if not isinstance(inputs, Mapping):
        raise EdgevitError(f"{source}: run() takes a dict {{input name: numpy array}} with inputs "
                           f"{', '.join(map(repr, names))}, got {type(inputs).__name__}")
    if list(inputs) != list(names) and sorted(inputs) != sorted(names):
        raise EdgevitError(_unknown_names(source, list(inputs), names))


class CheckedRunner:
    """Shared part of every artifact runner: I/O validation against the manifest and timing.

    Subclasses implement ``_run(xs) -> ys``: the inputs as contiguous arrays in manifest order → the outputs in
    manifest order. A manifest without outputs (hand-written in tests) names them ``output_0``, ``output_1``…
    """

    def __init__(self, manifest: Manifest, source: Path, load_seconds: float):
        self.manifest = manifest
        self.source = source
        self.load_seconds = load_seconds
        self.last_seconds = float("nan")
        where = f"{source}: manifest"
        self.inputs = tuple(IOSpec.from_dict(d, where) for d in manifest.inputs)
        self.outputs = tuple(IOSpec.from_dict(d, where) for d in manifest.outputs)
        if not self.inputs:
            raise EdgevitError(f"{where} lists no inputs; re-export the artifact")
        self.input_names = tuple(s.name for s in self.inputs)
        self.output_names = tuple(s.name for s in self.outputs)
        first = self.inputs[0]
        self.input_shape, self.input_dtype = first.shape, np.dtype(first.dtype)  # the first (image) input

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(self.inputs) != 1 or len(self.outputs) > 1:
            raise EdgevitError(
                f"{self.source}: runner(x) is for one input and one output; this artifact takes "
                f"{', '.join(map(repr, self.input_names))} and returns {', '.join(map(repr, self.output_names))}: "
                "call runner.run({name: array, ...})")
        if not self.inputs[0].matches(x):
            raise EdgevitError(f"{self.source}: input must be {self.input_dtype} {self.input_shape} "
                               f"(as exported), got {describe_array(x)}; re-export with --input-size for other sizes")
        ys = self._timed([x])
        if len(ys) != 1:
            raise EdgevitError(f"{self.source}: the program returned {len(ys)} outputs; call runner.run(...)")
        return ys[0]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{input name: array}`` (every input, of its manifest dtype and shape) → ``{output name: array}``."""
        _check_mapping(self.source, inputs, self.input_names)
        for spec in self.inputs:
            if not spec.matches(inputs[spec.name]):
                raise EdgevitError(f"{self.source}: input {spec.name!r} must be {spec.describe()} (as exported), "
                                   f"got {describe_array(inputs[spec.name])}")
        ys = self._timed([inputs[s.name] for s in self.inputs])
        names = self.output_names or tuple(f"output_{i}" for i in range(len(ys)))
        return dict(zip(names, ys))

    def _timed(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        start = time.perf_counter()
        ys = self._run([np.ascontiguousarray(x) for x in xs])
        self.last_seconds = time.perf_counter() - start
        if self.outputs:
            if len(ys) != len(self.outputs):
                raise EdgevitError(f"{self.source}: the program returned {len(ys)} outputs, the manifest lists "
                                   f"{len(self.outputs)}; re-export the artifact")
            for spec, y in zip(self.outputs, ys):
                if tuple(y.shape) != spec.shape:
                    raise EdgevitError(f"{self.source}: output {spec.name!r} has shape {tuple(y.shape)}, the "
                                       f"manifest says {spec.shape}; re-export the artifact")
        return ys

    def _run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


class TorchRunner:
    """Eager PyTorch as a runner (the float reference in reports).

    ``input_names`` / ``output_names``: the names :meth:`run` takes and returns, in ``forward``'s argument
    and result order (default: one ``image`` in, one ``logits`` out). Shapes are not checked: eager models
    take any size.
    """

    def __init__(self, model: nn.Module, input_names: Sequence[str] = ("image",),
                 output_names: Sequence[str] = ("logits",)):
        self.model = model.eval()
        self.manifest = None
        self.load_seconds = 0.0
        self.last_seconds = float("nan")
        self.input_names, self.output_names = tuple(input_names), tuple(output_names)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(self.input_names) != 1 or len(self.output_names) != 1:
            raise EdgevitError(f"{type(self.model).__name__}: runner(x) is for one input and one output; call "
                               "runner.run({name: array, ...})")
        start = time.perf_counter()
        with torch.inference_mode():
            y = self.model(torch.from_numpy(x)).float().numpy()
        self.last_seconds = time.perf_counter() - start
        return y

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{input name: array}`` → ``{output name: array}`` (outputs as the model returns them: float32 stays)."""
        what = type(self.model).__name__
        _check_mapping(what, inputs, self.input_names)
        for name in self.input_names:
            if not isinstance(inputs[name], np.ndarray):
                raise EdgevitError(f"{what}: input {name!r} must be a numpy array, got {describe_array(inputs[name])}")
        start = time.perf_counter()
        with torch.inference_mode():
            y = self.model(*(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.input_names))
        ys = tuple(y) if isinstance(y, tuple | list) else (y,)
        if len(ys) != len(self.output_names):
            raise EdgevitError(f"{what}: returned {len(ys)} outputs, expected {len(self.output_names)} "
                               f"({', '.join(self.output_names)})")
        out = {n: t.numpy() for n, t in zip(self.output_names, ys)}
        self.last_seconds = time.perf_counter() - start
        return out


def load_artifact(path: str | Path, threads: int | None = None) -> Runner:
    """Load an exported artifact through its manifest (sha256 checked) and return a runner."""
    from ..lowering.base import get_backend

    manifest, artifact = read_manifest(path)
    return get_backend(manifest.format).load(artifact, manifest, threads)
