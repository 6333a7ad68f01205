"""Pieces shared by the super-resolution families: the contract, the fixed bicubic skip, edge padding.

Every op here is export-friendly for a static input shape: pads are slices + ``cat`` (no "replicate" pad
mode, which some runtimes lack), the bicubic skip is a constant-weight grouped conv + pixel shuffle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import processing
from .contract import TensorSpec


@dataclass(frozen=True)
class SRContract:
    """Super-resolution by an integer ``scale``.

    Input ``image``: float32 N×3×h×w, RGB in [0, 1], any h, w ≥ 1 (the model pads internally to a multiple
    of ``size_multiple`` and crops). Output ``image``: float32 N×3×(scale·h)×(scale·w), RGB in [0, 1].
    Large images are run in fixed input tiles (``tile``: an int for square tiles, or (height, width), e.g. a
    camera frame's 480×640 so one tile covers it) overlapping by ``margin`` pixels on each inner side
    (:func:`edgevit.sr.tiling.upscale_tiled`); ``margin`` bounds the receptive field, so tiled output equals
    untiled output exactly. ``eval_size``: the input size model cards quote MACs at.
    """

    scale: int
    tile: int | tuple[int, int]
    margin: int
    size_multiple: int = 1
    eval_size: tuple[int, int] = (480, 640)
    task: str = field(default="super-resolution", init=False)

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {self.scale}")
        for t in self.tile_hw:
            if t % self.size_multiple or self.margin % self.size_multiple:
                raise ValueError(f"tile {t} and margin {self.margin} must be multiples of {self.size_multiple}")
            if t <= 2 * self.margin:
                raise ValueError(f"tile {t} must exceed twice the margin {self.margin}")

    @property
    def tile_hw(self) -> tuple[int, int]:
        """(height, width) of an input tile in LR pixels."""
        return (self.tile, self.tile) if isinstance(self.tile, int) else (int(self.tile[0]), int(self.tile[1]))

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("image", ("N", 3, "h", "w"), "float32", "NCHW", "RGB in [0, 1]"),)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        s = self.scale
        return (TensorSpec("image", ("N", 3, f"{s}*h", f"{s}*w"), "float32", "NCHW", "RGB in [0, 1]"),)

    def to_dict(self) -> dict:
        """JSON-ready description (goes into model info and artifact manifests)."""
        return {
            "task": self.task, "scale": self.scale,
            "inputs": [asdict(t) for t in self.inputs], "outputs": [asdict(t) for t in self.outputs],
            "normalization": {"scale": 1 / 255, "color": "RGB", "range": [0.0, 1.0]},
            "tiling": {"tile": list(self.tile_hw), "margin": self.margin, "size_multiple": self.size_multiple},
            "eval_size": list(self.eval_size),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SRContract:
        """Inverse of :meth:`to_dict` (to run artifacts from their manifest alone)."""
        t = d["tiling"]
        tile = t["tile"] if isinstance(t["tile"], int) else (int(t["tile"][0]), int(t["tile"][1]))
        return cls(d["scale"], tile, t["margin"], t["size_multiple"], tuple(d["eval_size"]))


def edge_pad(x: torch.Tensor, bottom: int, right: int, top: int = 0, left: int = 0) -> torch.Tensor:
    """Replicate the border rows/columns of N×C×H×W ``x`` (as slices + ``cat``); pads are Python ints."""
    if top or bottom:
        x = torch.cat([x[:, :, :1]] * top + [x] + [x[:, :, -1:]] * bottom, dim=2)
    if left or right:
        x = torch.cat([x[:, :, :, :1]] * left + [x] + [x[:, :, :, -1:]] * right, dim=3)
    return x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Edge-pad the bottom/right of N×C×H×W ``x`` so H and W become multiples of ``multiple``."""
    h, w = x.shape[-2:]
    return edge_pad(x, -h % multiple, -w % multiple)


def bicubic_phase_kernel(scale: int) -> np.ndarray:
    """float64 (scale², 5, 5): output phase (a, b) of an integer bicubic upscale as a 5×5 filter.

    Output pixel (scale·i + a, scale·j + b) = Σ K[a·scale + b, u, v] · x[i + u - 2, j + v - 2] (edge
    padded), with the taps and weights of :func:`edgevit.processing.bicubic_taps` (a = -0.75, half-pixel
    centres, clamped borders), i.e. the same map as ``F.interpolate(mode="bicubic", align_corners=False)``.
    """
    idx, wts = processing.bicubic_taps(16, 16 * scale)  # interior rows: no clamping
    taps = np.zeros((scale, 5))
    for a in range(scale):
        d = 4 * scale + a  # an output row whose source is input row 4
        for i, w in zip(idx[d], wts[d]):
            taps[a, i - 4 + 2] += w
    return np.einsum("au,bv->abuv", taps, taps).reshape(scale * scale, 5, 5)


class BicubicSkip(nn.Module):
    """Bicubic ×``scale`` upsampling of N×3×h×w as an edge pad, a constant 5×5 grouped conv and a pixel
    shuffle: equal to ``F.interpolate(mode="bicubic", align_corners=False)`` for every input size."""

    def __init__(self, scale: int, channels: int = 3):
        super().__init__()
        self.scale, self.channels = scale, channels
        k = torch.from_numpy(bicubic_phase_kernel(scale)).float()
        self.register_buffer("kernel", k[None].repeat(channels, 1, 1, 1).reshape(-1, 1, 5, 5), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(edge_pad(x, 2, 2, 2, 2), self.kernel, groups=self.channels)
        return F.pixel_shuffle(y, self.scale)
