"""Per-layer int8 sensitivity by emulation, to rank which layers must stay float.

One layer ("unit") at a time is simulated in int8 inside the eager float model — weights per-output-channel
symmetric int8, and the input of every conv/linear in it per-tensor affine int8 with ranges observed on
real calibration images (the XNNPACK / LiteRT / QDQ int8 scheme) — and the model output is compared with
float (SQNR, dB). Emulation ranks layers quickly and backend-independently; the verdict on an artifact is
always the fidelity measured on the artifact itself (:mod:`edgevit.fidelity`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..fidelity import sqnr_db
from ..lowering.rewrite import MatmulBicubicUpsample
from ..models import layers

# A "layer" in reports: the outermost module of one of these types.
UNIT_TYPES: tuple[type[nn.Module], ...] = (
    layers.DSConv, layers.MBConv, layers.FusedMBConv, layers.ResBlock, layers.LiteMLA, layers.ConvUnit,
    MatmulBicubicUpsample,
)
_WEIGHTED = (nn.Conv2d, nn.Linear, MatmulBicubicUpsample)


@dataclass
class LayerSensitivity:
    name: str
    kind: str
    sqnr_db: float  # model output with only this layer in (emulated) int8

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "sqnr_db": round(self.sqnr_db, 2)}


def quant_units(model: nn.Module) -> list[str]:
    """Qualified names of the outermost modules of :data:`UNIT_TYPES`, in definition order."""
    names: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, UNIT_TYPES) and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel (dim 0) symmetric int8: scale = max|w| / 127."""
    scale = w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127
    shape = (-1,) + (1,) * (w.dim() - 1)
    return torch.clamp(torch.round(w / scale.view(shape)), -127, 127) * scale.view(shape)


def fake_quant_activation(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Per-tensor affine int8 over [lo, hi] (range widened to include 0, as int8 kernels require)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255
    zero = round(-lo / scale) - 128
    return (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale


@contextmanager
def _hooks(modules: Sequence[nn.Module], hook):
    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _observe_ranges(model: nn.Module, calibration: Sequence[np.ndarray]) -> dict[int, tuple[float, float]]:
    ranges: dict[int, tuple[float, float]] = {}

    def observe(module: nn.Module, args: tuple) -> None:
        lo, hi = float(args[0].min()), float(args[0].max())
        old = ranges.get(id(module), (lo, hi))
        ranges[id(module)] = (min(old[0], lo), max(old[1], hi))

    weighted = [m for m in model.modules() if isinstance(m, _WEIGHTED)]
    with _hooks(weighted, observe), torch.no_grad():
        for x in calibration:
            model(torch.from_numpy(x))
    return ranges


def _emulated_copy(model: nn.Module, unit: str, ranges: dict[int, tuple[float, float]]) -> tuple[nn.Module, list]:
    """A copy of ``model`` with ``unit``'s weights fake-quantized, and the pre-hook targets for its inputs."""
    twin = copy.deepcopy(model)
    originals = dict(model.named_modules())
    targets = []
    for name, module in twin.get_submodule(unit).named_modules(prefix=unit):
        if not isinstance(module, _WEIGHTED):
            continue
        with torch.no_grad():
            if isinstance(module, MatmulBicubicUpsample):
                module.mh.copy_(fake_quant_weight(module.mh))
                module.mw.copy_(fake_quant_weight(module.mw))
            else:
                module.weight.copy_(fake_quant_weight(module.weight))
        targets.append((module, ranges[id(originals[name])]))
    return twin, targets


def layer_sensitivity(model: nn.Module, calibration: Sequence[np.ndarray], evaluation: Sequence[np.ndarray],
                      units: Sequence[str] | None = None, progress: bool = True) -> list[LayerSensitivity]:
    """Emulated-int8 SQNR (dB) of the model output with one unit quantized at a time (default: all units).

    ``calibration`` and ``evaluation``: real pre-processed images, float32 1×3×H×W each.
    """
    units = list(units) if units is not None else quant_units(model)
    ranges = _observe_ranges(model, calibration)
    with torch.no_grad():
        reference = [model(torch.from_numpy(x)).numpy() for x in evaluation]
    kinds = dict(model.named_modules())
    report = []
    for unit in tqdm(units, desc="sensitivity", unit="layer", disable=not progress):
        twin, targets = _emulated_copy(model, unit, ranges)
        by_id = {id(m): r for m, r in targets}

        def quantize_input(module: nn.Module, args: tuple) -> tuple:
            lo, hi = by_id[id(module)]
            return (fake_quant_activation(args[0], lo, hi), *args[1:])

        with _hooks([m for m, _ in targets], quantize_input), torch.no_grad():
            got = [twin(torch.from_numpy(x)).numpy() for x in evaluation]
        db = float(np.mean([sqnr_db(r, g) for r, g in zip(reference, got)]))
        report.append(LayerSensitivity(unit, type(kinds[unit]).__name__, db))
    return report


def emulate_int8(model: nn.Module, calibration: Sequence[np.ndarray], skip: Sequence[str] = ()) -> nn.Module:
    """The whole model in emulated int8 except the ``skip`` units (for estimates, not for export)."""
    ranges = _observe_ranges(model, calibration)
    twin = copy.deepcopy(model)
    originals = dict(model.named_modules())
    for name, module in twin.named_modules():
        if not isinstance(module, _WEIGHTED) or any(name == s or name.startswith(s + ".") for s in skip):
            continue
        lo, hi = ranges[id(originals[name])]
        with torch.no_grad():
            if isinstance(module, MatmulBicubicUpsample):
                module.mh.copy_(fake_quant_weight(module.mh))
                module.mw.copy_(fake_quant_weight(module.mw))
            else:
                module.weight.copy_(fake_quant_weight(module.weight))
        module.register_forward_pre_hook(
            lambda m, a, lo=lo, hi=hi: (fake_quant_activation(a[0], lo, hi), *a[1:]))
    return twin


__all__ = ["LayerSensitivity", "emulate_int8", "fake_quant_activation", "fake_quant_weight", "layer_sensitivity",
           "quant_units"]
