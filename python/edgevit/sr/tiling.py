"""Tiled super-resolution: fixed-size input tiles with overlap, one tile at a time.

Any callable with the SR contract works (``fn(x)``: float32 numpy N×3×th×tw RGB in [0, 1] → N×3×(s·th)×(s·tw)),
so eager models and fixed-shape artifacts are run the same way. Exactness: the image is treated as edge-padded
to a multiple of ``size_multiple`` (what the models do internally), tiles start at multiples of it, the last
tile ends at the padded edge, and each output pixel is taken from a tile in which it lies at least
``margin`` (≥ the receptive field) from every inner tile edge; so the result equals the untiled model
everywhere, up to float rounding. Only an image smaller than a tile is padded further (edge) to the tile
size, which changes the pixels within the receptive field of that padded edge.
Memory: the output plus one tile's input, activations and output, whatever the image size (the image is
never padded or copied whole).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..errors import EdgevitError
from ..models.sr_common import SRContract

SRFn = Callable[[np.ndarray], np.ndarray]


def as_sr_fn(model: nn.Module | SRFn) -> SRFn:
    """A numpy-in/numpy-out callable for ``model`` (an ``nn.Module`` runs under ``inference_mode``)."""
    if not isinstance(model, nn.Module):
        return model

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return fn


def tile_spans(n: int, tile: int, margin: int, multiple: int = 1) -> list[tuple[int, int, int]]:
    """Tiles along one axis of length ``n`` (already a multiple of ``multiple``): (origin, keep_start, keep_end).

    The tile covers [origin, origin + tile) of the (padded) axis and contributes output for
    [keep_start, keep_end); the kept ranges partition [0, n), and each lies ≥ ``margin`` inside its tile
    except at the axis ends. ``n <= tile``: one tile at 0 keeping [0, n).
    """
    if n <= tile:
        return [(0, 0, n)]
    stride = tile - 2 * margin
    if stride <= 0 or stride % multiple or tile % multiple:
        raise EdgevitError(f"tiling: tile {tile}, margin {margin} must give a positive stride that is a multiple of {multiple}")
    origins = list(range(0, n - tile, stride)) + [n - tile]
    spans = []
    for i, o in enumerate(origins):
        start = 0 if i == 0 else origins[i] + margin
        end = n if i == len(origins) - 1 else origins[i + 1] + margin
        spans.append((o, start, end))
    return spans


def _tile_at(x: np.ndarray, oy: int, ox: int, th: int, tw: int) -> np.ndarray:
    """The th×tw window of N×3×H×W ``x`` at (oy, ox), edge-padded where it runs past the image (the same
    pixels as a slice of the whole edge-padded image, without padding the whole image)."""
    t = x[:, :, oy : oy + th, ox : ox + tw]
    ph, pw = th - t.shape[2], tw - t.shape[3]
    t = np.pad(t, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge") if ph or pw else t
    return np.ascontiguousarray(t)


def upscale_tiled(fn: nn.Module | SRFn, x: np.ndarray, contract: SRContract,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Upscale float32 N×3×H×W ``x`` (RGB in [0, 1]) by ``contract.scale`` in fixed ``contract.tile_hw`` tiles.

    Returns float32 N×3×(s·H)×(s·W). ``fn`` always gets th×tw inputs, one at a time (an image smaller than a
    tile is edge-padded up to it). Working memory beyond ``x`` and the output: one input tile and one output
    tile. ``progress(done, total)`` is called after each tile.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4 or x.shape[1] != 3:
        raise EdgevitError(f"tiling: input must be float32 N×3×H×W, got {getattr(x, 'dtype', type(x).__name__)} "
                           f"{getattr(x, 'shape', '')}")
    run, s, m, k = as_sr_fn(fn), contract.scale, contract.margin, contract.size_multiple
    th, tw = contract.tile_hw
    n, _, h, w = x.shape
    ph, pw = -(-h // k) * k, -(-w // k) * k  # the models' own padding
    rows, cols = tile_spans(ph, th, m, k), tile_spans(pw, tw, m, k)
    out = np.empty((n, 3, s * h, s * w), np.float32)
    done = 0
    for oy, y0, y1 in rows:
        for ox, x0, x1 in cols:
            y = run(_tile_at(x, oy, ox, th, tw))
            if y.shape != (n, 3, s * th, s * tw):
                raise EdgevitError(f"tiling: the model returned {tuple(y.shape)} for a {th}x{tw} tile; expected "
                                   f"{(n, 3, s * th, s * tw)} (is it an x{s} model?)")
            y1c, x1c = min(y1, h), min(x1, w)  # drop the padding
            if y0 < y1c and x0 < x1c:
                out[:, :, s * y0 : s * y1c, s * x0 : s * x1c] = y[:, :, s * (y0 - oy) : s * (y1c - oy),
                                                                  s * (x0 - ox) : s * (x1c - ox)]
            del y  # the next tile's output must not coexist with this one
            done += 1
            if progress is not None:
                progress(done, len(rows) * len(cols))
    return out
