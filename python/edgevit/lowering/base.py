"""The backend protocol: one lowering target (ExecuTorch, LiteRT, ONNX, TensorRT) per file.

A backend turns a float PyTorch model plus an :class:`ExportRequest` into one artifact file and reports
what it did (:class:`ExportResult`); it also loads that artifact back as a :class:`~edgevit.runtime.Runner`.
Backends import their toolchains lazily, inside methods, and raise
:class:`~edgevit.errors.MissingDependencyError` naming the extra when one is missing.
"""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from torch import nn

from ..errors import EdgevitError, UnknownKeyError
from ..quantize.placement import INT8_PLACEMENTS, check_placement
from ..quantize.ranges import RANGE_METHODS
from ..registry import Registry
from .float_region import FloatRegion

if TYPE_CHECKING:
    from ..manifest import Manifest
    from ..runtime.base import Runner

PRECISIONS = ("fp32", "fp16", "int8")
# Tensor dtypes an artifact input may have; each backend lists the ones it supports (``Backend.dtypes``).
DTYPES = ("float32", "int32", "int64")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ACTIVATIONS = ("static", "dynamic")  # int8 activation quantization modes (ExportRequest.activations)


@dataclass(frozen=True)
class IOSpec:
    """One static artifact input (or, in manifests, output): ``name`` (an identifier), ``shape`` (positive
    ints) and ``dtype`` (one of :data:`DTYPES`)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise EdgevitError(f"I/O name {self.name!r} must be an identifier (letters, digits, '_')")
        shape = tuple(self.shape) if isinstance(self.shape, Sequence) else ()
        if not shape or not all(isinstance(d, int | np.integer) and not isinstance(d, bool) and d > 0 for d in shape):
            raise EdgevitError(f"I/O {self.name!r}: shape must be positive ints, got {self.shape!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))
        if self.dtype not in DTYPES:
            raise EdgevitError(f"I/O {self.name!r}: dtype {self.dtype!r} is not supported; choose one of {DTYPES}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> IOSpec:
        """From a manifest entry ``{"name", "shape", "dtype", ...}`` (other keys, e.g. layout, ignored)."""
        try:
            return cls(str(data["name"]), tuple(data["shape"]), str(data.get("dtype", "float32")))
        except (KeyError, TypeError) as exc:
            raise EdgevitError(f"{where}: I/O entry {data!r} needs name, shape and dtype ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def describe(self) -> str:
        return f"{self.dtype} {self.shape}"

    def matches(self, x: Any) -> bool:
        return isinstance(x, np.ndarray) and x.dtype == np.dtype(self.dtype) and tuple(x.shape) == self.shape


def describe_array(x: Any) -> str:
    """Short description of a value offered as an array, for error messages."""
    return f"{type(x).__name__} {getattr(x, 'dtype', '?')} {tuple(getattr(x, 'shape', ()))}"


def _unique(names: Sequence[str], what: str) -> None:
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise EdgevitError(f"{what} names must be unique (ONNX and LiteRT address I/O by name), repeated: {dup}")


@dataclass
class ExportRequest:
    """What to lower.

    ``model``: eval-mode module whose ``forward`` takes the ``inputs`` positionally (tensors of their
    shapes and dtypes) and returns one tensor or a tuple of tensors, one per name in ``outputs`` (in order),
    already rewritten by :func:`edgevit.lowering.rewrite.export_friendly` where it applies.

    Single image (segmentation, super-resolution): ``ExportRequest(model, (1, 3, H, W), precision, out)``:
    ``input_shape`` is shorthand for ``inputs=(IOSpec("image", input_shape),)`` and ``outputs`` defaults to
    ``("logits",)``. Several inputs or outputs: :meth:`multi` (``input_shape`` then stays None).

    ``calibration``: for int8, real samples, never random tensors: one tuple of arrays per sample, aligned
    with ``inputs`` (a bare array is accepted for a single input), e.g. pre-processed photos 1×3×H×W.
    ``keep_float``: qualified module names (``model.named_modules()``) to leave un-quantized.
    ``float_regions``: declared :class:`~edgevit.lowering.float_region.FloatRegion` values (int8 only):
    modules computed in float32 from un-quantized inputs, and/or the float output tail.
    ``activations`` (int8 only): ``"static"`` — int8 activation ranges fixed at export from the calibration
    samples; ``"dynamic"`` — activations quantized at run time from each tensor's own range, only where
    they enter a conv / linear, everything between in float32 (backends list theirs in ``activation_modes``).
    ``ranges`` (static int8 only): a :data:`~edgevit.quantize.ranges.RANGE_METHODS` key choosing how the
    static activation ranges come from the calibration samples, or None for the backend's own default
    (backends list the methods they take in ``range_methods``).
    ``placement`` (static int8 only): a :data:`~edgevit.quantize.placement.INT8_PLACEMENTS` key, where the
    activation quantizers go, or None for the backend's default (backends list theirs in ``placements``).
    """

    model: nn.Module
    input_shape: tuple[int, ...] | None
    precision: str
    out_path: Path
    calibration: list[tuple[np.ndarray, ...]] | list[np.ndarray] | None = None
    keep_float: tuple[str, ...] = ()
    inputs: tuple[IOSpec, ...] = ()
    outputs: tuple[str, ...] = ()
    float_regions: tuple[FloatRegion, ...] = ()
    activations: str = "static"
    ranges: str | None = None
    placement: str | None = None

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATIONS:
            raise UnknownKeyError("activation quantization mode", str(self.activations), ACTIVATIONS)
        if self.activations != "static" and self.precision != "int8":
            raise EdgevitError(f"activations={self.activations!r} applies to int8 only (precision is "
                               f"{self.precision!r})")
        if self.ranges is not None and self.activations != "static":
            raise EdgevitError(f"ranges={self.ranges!r} applies to static int8 activations only (activations "
                               f"{self.activations!r})")
        check_ranges(self.precision, self.ranges, "ExportRequest", RANGE_METHODS.names())  # key and precision
        check_placement(self.precision, self.activations, self.placement, "ExportRequest",
                        tuple(INT8_PLACEMENTS.names()))
        if self.inputs:
            if self.input_shape is not None:
                raise EdgevitError("ExportRequest: pass input_shape (one image input) or inputs, not both")
            if not all(isinstance(s, IOSpec) for s in self.inputs):
                raise EdgevitError(f"ExportRequest.inputs must be IOSpec values, got {list(self.inputs)!r}")
            self.inputs = tuple(self.inputs)
            if not self.outputs:
                raise EdgevitError("ExportRequest: name the model's outputs (outputs=(...)) when inputs are given")
        else:
            shape = tuple(self.input_shape) if isinstance(self.input_shape, Sequence) else ()
            if len(shape) != 4 or not all(isinstance(d, int | np.integer) and d > 0 for d in shape):
                raise EdgevitError(f"input_shape must be 4 positive ints (N, C, H, W) for one image input, got "
                                   f"{self.input_shape!r}; use ExportRequest.multi for other inputs")
            self.inputs = (IOSpec("image", shape),)
        self.outputs = tuple(self.outputs) or ("logits",)
        if not all(isinstance(n, str) and _NAME.fullmatch(n) for n in self.outputs):
            raise EdgevitError(f"ExportRequest.outputs must be identifiers, got {list(self.outputs)!r}")
        _unique([s.name for s in self.inputs] + list(self.outputs), "input and output")
        self.input_shape = self.inputs[0].shape if len(self.inputs) == 1 else None
        self.keep_float = tuple(self.keep_float)
        self.float_regions = tuple(self.float_regions)
        if self.float_regions:
            check_keep_float(self.model, [m for r in self.float_regions for m in r.modules])

    @classmethod
    def multi(cls, model: nn.Module, inputs: Sequence[IOSpec], outputs: Sequence[str], precision: str,
              out_path: Path, calibration: list[tuple[np.ndarray, ...]] | None = None,
              keep_float: Sequence[str] = (), float_regions: Sequence[FloatRegion] = (),
              activations: str = "static", ranges: str | None = None, placement: str | None = None
              ) -> ExportRequest:
        """A request with named ``inputs`` (forward's positional arguments) and ``outputs`` (its results)."""
        return cls(model, None, precision, Path(out_path), calibration, tuple(keep_float), tuple(inputs),
                   tuple(outputs), tuple(float_regions), activations, ranges, placement)

    def example_inputs(self) -> tuple[Any, ...]:
        """Example tensors for tracing: the first calibration sample when there is one, else zeros."""
        import torch

        if self.calibration:
            first = check_calibration(self.calibration[:1], self.inputs, "export")[0]
            return tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in first)
        return tuple(torch.zeros(s.shape, dtype=getattr(torch, s.dtype)) for s in self.inputs)


def check_activations(precision: str, activations: str, backend: str, modes: Sequence[str]) -> None:
    """Refuse an int8 activation mode that ``backend`` does not implement (callers check a request's
    ``precision, activations``, or a pipeline's before it lowers anything)."""
    if precision == "int8" and activations not in modes:
        raise EdgevitError(f"{backend}: int8 activations {activations!r} are not implemented for this "
                           f"format (it has {', '.join(modes)}); export .pte or .tflite for dynamic activations")


def check_ranges(precision: str, ranges: str | None, backend: str, methods: Sequence[str]) -> None:
    """Refuse an unknown static-range method, one given for a float precision, or one ``backend`` does not
    implement (None: the backend's default, always fine)."""
    if ranges is None:
        return
    RANGE_METHODS.get(ranges)
    if precision != "int8":
        raise EdgevitError(f"activation ranges {ranges!r} apply to int8 only (precision is {precision!r})")
    if ranges not in methods:
        have = f"it takes {', '.join(methods)}" if methods else "its quantizer chooses its own ranges"
        raise EdgevitError(f"{backend}: activation ranges {ranges!r} are not implemented for this format ({have}); "
                           "drop --ranges or export onnx")


def check_dtypes(request: ExportRequest, backend: str, dtypes: Sequence[str]) -> None:
    """Refuse inputs whose dtype ``backend`` cannot take."""
    for spec in request.inputs:
        if spec.dtype not in dtypes:
            raise EdgevitError(f"{backend}: input {spec.name!r} is {spec.dtype}; this backend takes "
                               f"{', '.join(dtypes)} inputs (declare integer inputs int32 for it)")


def flat_outputs(y: Any, names: Sequence[str], what: str) -> tuple[Any, ...]:
    """A forward's result as a tuple with one tensor per name in ``names`` (count checked)."""
    ys = tuple(y) if isinstance(y, tuple | list) else (y,)
    if len(ys) != len(names):
        raise EdgevitError(f"{what}: the model returns {len(ys)} output(s) but the request names {len(names)} "
                           f"({', '.join(names)}); set ExportRequest outputs to one name per returned tensor")
    return ys


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
    activation_modes: tuple[str, ...]  # int8 activation modes it implements (ACTIVATIONS)
    range_methods: tuple[str, ...]  # static-range methods it takes (RANGE_METHODS keys; () = its own only)
    placements: tuple[str, ...]  # static int8 placements it takes (INT8_PLACEMENTS keys), its default first
    dtypes: tuple[str, ...]  # input dtypes it takes (float32 always)
    extra: str  # pip extra that installs the toolchain

    def export(self, request: ExportRequest) -> ExportResult: ...

    def load(self, artifact: Path, manifest: Manifest, threads: int | None = None) -> Runner: ...


def check_calibration(calibration: Sequence[Any] | None, inputs: Sequence[IOSpec] | Sequence[int],
                      backend: str) -> list[tuple[np.ndarray, ...]]:
    """The calibration samples of an int8 request, validated against ``inputs`` (specs, or one float32
    input's shape): one tuple of arrays per sample in input order (a bare array for a single input), each
    of its spec's dtype and shape, floats finite. Returns tuples. ``backend`` names the caller in errors."""
    specs = tuple(inputs) if inputs and isinstance(inputs[0], IOSpec) else (IOSpec("image", tuple(inputs)),)
    if not calibration:
        what = "images" if len(specs) == 1 else "samples (one tuple of real inputs per sample)"
        raise EdgevitError(f"int8 {backend} export needs calibration {what} (ExportRequest.calibration): real "
                           "pre-processed data of the input shapes, never random tensors; pass --calib DIR")
    samples = []
    for i, sample in enumerate(calibration):
        xs = tuple(sample) if isinstance(sample, tuple | list) else (sample,)
        if len(xs) != len(specs):
            raise EdgevitError(f"calibration[{i}]: expected {len(specs)} arrays ({', '.join(s.name for s in specs)}), "
                               f"got {len(xs)}")
        for j, (x, spec) in enumerate(zip(xs, specs)):
            at = f"calibration[{i}]" if len(specs) == 1 else f"calibration[{i}][{j}] ({spec.name})"
            if not spec.matches(x):
                kind = " pre-processed image" if len(specs) == 1 else ""
                raise EdgevitError(f"{at}: expected a {spec.dtype} {spec.shape}{kind}, got {describe_array(x)}")
            if spec.dtype == "float32" and not np.all(np.isfinite(x)):
                raise EdgevitError(f"{at}: contains NaN or infinity")
        samples.append(xs)
    return samples


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
