"""Parameter and MAC counts.

MACs are counted by PyTorch's operator-level FLOP counter on shape-only (meta) tensors: convolutions
and matrix products (including the attention matmuls), each FLOP pair = one multiply-accumulate.
Normalisation, activations and resampling are not counted, as in the published tables.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on an input of ``input_shape`` (e.g. (1, 3, 512, 512))."""
    meta = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(input_shape, device="meta"))
    return counter.get_total_flops() // 2
