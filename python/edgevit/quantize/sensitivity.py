"""Per-layer int8 sensitivity by emulation, to rank which layers must stay float.

One layer ("unit") at a time is simulated in int8 inside the eager float model — weights per-output-channel
symmetric int8, and the input of every conv/linear in it (and the q/k/v tensor of LiteMLA attention, whose
matmuls int8 backends quantize too) per-tensor affine int8 with ranges observed on real calibration images
(the XNNPACK / LiteRT / QDQ int8 scheme) — and the model output is compared with float (SQNR, dB). Emulation ranks layers quickly and backend-independently; the verdict on an artifact is
always the fidelity measured on the artifact itself (:mod:`edgevit.fidelity`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
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
    """Qualified names of the outermost modules of :data:`UNIT_TYPES`, in definition order; for a model built
    from none of them (e.g. super-resolution nets of plain convolutions), its convolutions and linears."""
    names: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, UNIT_TYPES) and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names or [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


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


def _observe_ranges(model: nn.Module, calibration: Sequence[np.ndarray]) -> dict[int, tuple[float, float]]:
    """Input range of every weighted module and of every LiteMLA attention (its q/k/v tensor), by module id."""
    ranges: dict[int, tuple[float, float]] = {}

    def observe(key: int, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        old = ranges.get(key, (lo, hi))
        ranges[key] = (min(old[0], lo), max(old[1], hi))

    handles = [m.register_forward_pre_hook(lambda m, a: observe(id(m), a[0]))
               for m in model.modules() if isinstance(m, _WEIGHTED)]
    attentions = [m for m in model.modules() if isinstance(m, layers.LiteMLA)]
    for m in attentions:
        m.attend = lambda qkv, m=m, f=m.attend: (observe(id(m), qkv), f(qkv))[1]
    try:
        with torch.no_grad():
            for x in calibration:
                model(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
        for m in attentions:
            del m.attend  # back to the class method
    return ranges


def _emulate_in_place(module: nn.Module, lo_hi: tuple[float, float]) -> None:
    """Make ``module`` compute in emulated int8: int8 weights and int8 input (LiteMLA: int8 q/k/v)."""
    lo, hi = lo_hi
    if isinstance(module, layers.LiteMLA):
        module.attend = lambda qkv, f=module.attend: f(fake_quant_activation(qkv, lo, hi))
        return
    with torch.no_grad():
        if isinstance(module, MatmulBicubicUpsample):
            module.mh.copy_(fake_quant_weight(module.mh))
            module.mw.copy_(fake_quant_weight(module.mw))
        else:
            module.weight.copy_(fake_quant_weight(module.weight))
    module.register_forward_pre_hook(lambda m, a: (fake_quant_activation(a[0], lo, hi), *a[1:]))


def _emulated_copy(model: nn.Module, ranges: dict[int, tuple[float, float]], only: str | None = None,
                   skip: Sequence[str] = ()) -> nn.Module:
    """A copy of ``model`` in emulated int8: everything, or only the unit ``only``, minus the ``skip`` units."""
    twin = copy.deepcopy(model)
    originals = dict(model.named_modules())
    for name, module in twin.named_modules():
        inside = lambda units: any(name == u or name.startswith(u + ".") for u in units)  # noqa: E731
        if not isinstance(module, (*_WEIGHTED, layers.LiteMLA)) or inside(skip) or (only and not inside([only])):
            continue
        _emulate_in_place(module, ranges[id(originals[name])])
    return twin


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
        twin = _emulated_copy(model, ranges, only=unit)
        with torch.no_grad():
            got = [twin(torch.from_numpy(x)).numpy() for x in evaluation]
        db = float(np.mean([sqnr_db(r, g) for r, g in zip(reference, got)]))
        report.append(LayerSensitivity(unit, type(kinds[unit]).__name__, db))
    return report


def emulate_int8(model: nn.Module, calibration: Sequence[np.ndarray], skip: Sequence[str] = ()) -> nn.Module:
    """The whole model in emulated int8 except the ``skip`` units (for estimates, not for export)."""
    return _emulated_copy(model, _observe_ranges(model, calibration), skip=skip)


__all__ = ["LayerSensitivity", "emulate_int8", "fake_quant_activation", "fake_quant_weight", "layer_sensitivity",
           "quant_units"]
