"""The backend protocol: one lowering target (ExecuTorch, LiteRT, ONNX, TensorRT) per file.

A backend turns a float PyTorch model plus an :class:`ExportRequest` into one artifact file and reports
what it did (:class:`ExportResult`); it also loads that artifact back as a :class:`~edgevit.runtime.Runner`.
Backends import their toolchains lazily, inside methods, and raise
:class:`~edgevit.errors.MissingDependencyError` naming the extra when one is missing.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from torch import nn

from ..errors import EdgevitError
from ..registry import Registry

if TYPE_CHECKING:
    from ..manifest import Manifest
    from ..runtime.base import Runner

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ExportRequest:
    """What to lower.

    ``model``: float32 eval-mode module mapping float32 ``input_shape`` (1×3×H×W, normalised) to logits,
    already rewritten by :func:`edgevit.lowering.rewrite.export_friendly`.
    ``calibration``: real pre-processed images (each float32 1×3×H×W) for int8; never random tensors.
    ``keep_float``: qualified module names (``model.named_modules()``) to leave un-quantized.
    """

    model: nn.Module
    input_shape: tuple[int, int, int, int]
    precision: str
    out_path: Path
    calibration: list[np.ndarray] | None = None
    keep_float: tuple[str, ...] = ()


@dataclass
class ExportResult:
    tool_versions: dict[str, str]
    delegation: dict[str, Any] | None = None  # {"delegated_nodes", "non_delegated_nodes", "partitions", ...}
    notes: list[str] = field(default_factory=list)
    quantization: dict[str, Any] | None = None  # recipe details (scheme, kept-float modules)


class Backend(Protocol):
    name: str  # manifest "format": pte | tflite | onnx | engine
    extension: str  # artifact file suffix, e.g. ".pte"
    precisions: tuple[str, ...]
    extra: str  # pip extra that installs the toolchain

    def export(self, request: ExportRequest) -> ExportResult: ...

    def load(self, artifact: Path, manifest: Manifest, threads: int | None = None) -> Runner: ...


def check_calibration(calibration: Sequence[np.ndarray] | None, input_shape: Sequence[int],
                      backend: str) -> list[np.ndarray]:
    """The calibration images of an int8 request, validated: real pre-processed images, float32 of the
    artifact's input shape, finite. ``backend`` names the caller in the error message."""
    if not calibration:
        raise EdgevitError(f"int8 {backend} export needs calibration images (ExportRequest.calibration): real "
                           "pre-processed images, float32 of the input shape, never random tensors; pass --calib DIR")
    shape = tuple(input_shape)
    for i, x in enumerate(calibration):
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.shape != shape:
            got = f"{type(x).__name__} {getattr(x, 'dtype', '?')} {tuple(getattr(x, 'shape', ()))}"
            raise EdgevitError(f"calibration[{i}]: expected a float32 {shape} pre-processed image, got {got}")
        if not np.all(np.isfinite(x)):
            raise EdgevitError(f"calibration[{i}]: contains NaN or infinity")
    return list(calibration)


def check_keep_float(model: nn.Module, names: Sequence[str]) -> list[str]:
    """``names`` deduplicated, each a qualified submodule name of ``model`` (close matches are suggested)."""
    known = [name for name, _ in model.named_modules() if name]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "use model.named_modules() names"
            raise EdgevitError(f"keep_float: {name!r} is not a module of {type(model).__name__}; {hint}")
    return list(dict.fromkeys(names))


# name -> "module:Class", imported on first use so a missing toolchain only matters when it is used.
BACKENDS: Registry[str] = Registry("format")
BACKENDS.add("pte", "edgevit.lowering.executorch:ExecuTorchBackend")
BACKENDS.add("tflite", "edgevit.lowering.litert:LiteRTBackend")
BACKENDS.add("onnx", "edgevit.lowering.onnx:OnnxBackend")


def get_backend(name: str) -> Backend:
    module, cls = BACKENDS.get(name).split(":")
    return getattr(importlib.import_module(module), cls)()
