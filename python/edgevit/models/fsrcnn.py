"""FSRCNN-sized baseline (after Dong et al., ECCV 2016, d=56, s=12, m=4; our implementation) on RGB.

5×5 feature extraction (56) → 1×1 shrink (12) → four 3×3 maps (12) → 1×1 expand (56), PReLU after each,
then a 9×9 transposed conv with stride ``scale`` to RGB. Unlike the paper it adds the same global bicubic
skip as EfficientViT-SR (the network learns the residual), so the comparison is about the trunk alone.
``model(x)``: x float32 N×3×h×w RGB in [0, 1] → N×3×(s·h)×(s·w) in [0, 1] (clamped in eval mode).
"""

from __future__ import annotations

import torch
from torch import nn

from .checkpoint import KeyMap
from .registry import register_model
from .sr_common import BicubicSkip, SRContract

D, S, M = 56, 12, 4


def receptive_margin(scale: int) -> int:
    """Low-resolution pixels on each side an output pixel can depend on: 5×5 (2), four 3×3 (4), and the
    9×9 transposed conv, whose taps reach ``ceil(4 / scale) + 1`` input pixels (a safe bound)."""
    return 2 + M + -(-4 // scale) + 1


class FSRCNN(nn.Module):
    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, D, 5, padding=2), nn.PReLU(D), nn.Conv2d(D, S, 1), nn.PReLU(S)]
        for _ in range(M):
            layers += [nn.Conv2d(S, S, 3, padding=1), nn.PReLU(S)]
        layers += [nn.Conv2d(S, D, 1), nn.PReLU(D)]
        self.body = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(D, 3, 9, stride=scale, padding=4, output_padding=scale - 1)
        self.skip = BicubicSkip(scale)
        with torch.no_grad():
            self.deconv.weight.normal_(0.0, 1e-3)
            self.deconv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.deconv(self.body(x)) + self.skip(x)
        return y if self.training else y.clamp(0.0, 1.0)


def _register(scale: int) -> None:
    margin = receptive_margin(scale)
    contract = SRContract(scale=scale, tile=128, margin=margin)

    @register_model(f"fsrcnn-x{scale}", family="baseline-sr", contract=contract, key_map=KeyMap())
    def build() -> FSRCNN:
        return FSRCNN(scale)


for _s in (2, 4):
    _register(_s)
