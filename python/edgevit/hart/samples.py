"""Writing generated samples: an image grid (uint8) and a PNG per run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .. import processing
from ..io import write_png
from .model import HartModel
from .sampler import SamplerSettings, generate_classes


def image_grid(images: torch.Tensor, columns: int, pad: int = 2) -> np.ndarray:
    """images: N×3×H×W in [-1, 1] -> one RGB uint8 grid (rows of ``columns``, ``pad`` white pixels)."""
    tiles = [processing.signed_to_image(im.detach().float().numpy()) for im in images]
    n, (h, w) = len(tiles), tiles[0].shape[:2]
    rows = -(-n // columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = tile
    return grid


def write_class_grid(model: HartModel, out: str | Path, per_class: int = 4, seed: int = 0,
                     settings: SamplerSettings = SamplerSettings(cfg=1.5), classes: Sequence[int] | None = None) -> Path:
    """One row per class, ``per_class`` samples each (seed, seed+1, ...), written as a PNG."""
    classes = list(range(model.cfg.transformer.num_classes)) if classes is None else list(classes)
    rows = [generate_classes(model, classes, seed=seed + k, settings=settings).images for k in range(per_class)]
    images = torch.stack(rows, dim=1).reshape(-1, *rows[0].shape[1:])  # class-major
    write_png(out, image_grid(images, per_class))
    return Path(out)
