"""Pixel and prompt transforms of EfficientViT-SAM (re-exported by :mod:`edgevit.processing`).

Frames: the *original* image is H×W (RGB uint8 H×W×3). The encoder sees the image with its longest side
resized to S (512 for L models, 1024 for XL) and zero-padded bottom-right to S×S. Prompts (points, box
corners) are given to the decoder in the *prompt frame*: the image resized so that its longest side is
1024, whatever S is (as upstream). Coordinates are (x, y) pixels, x to the right, y down.

Resizes follow upstream exactly in semantics:

* image: PIL ``BILINEAR`` (triangle filter widened by the scale factor when shrinking, i.e.
  antialiased; horizontal pass first, intermediate rounded to uint8) — upstream ``SamResize`` calls
  torchvision's ``resize`` on a PIL image. Ours is float64 math then rint; PIL's fixed-point arithmetic
  may differ by 1 on a few pixels.
* masks: ``F.interpolate(mode="bilinear", align_corners=False)`` without antialiasing, low-res logits
  256×256 → 1024×1024 → crop to the resized image → original size, then threshold 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import EdgevitError
from .processing import _array, _image, _int, _size, _triple

SAM_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0..255 scale
SAM_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
PROMPT_FRAME = 1024
LOW_RES = 256


def longest_side_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) of an ``height`` × ``width`` image resized so its longest side is ``long_side``:
    scale = long_side / max(height, width); each side ``int(side * scale + 0.5)`` (upstream's rounding)."""
    h, w = _size((height, width), "longest_side_shape: image size")
    scale = _int(long_side, "longest_side_shape: long_side") * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _triangle_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL BILINEAR taps for one axis: indices (n_out, k) int64 and normalised weights (n_out, k) float64.

    scale = n_in / n_out, support = max(scale, 1); output pixel i is centred at (i + 0.5) * scale and
    reads pixels int(centre ± support + 0.5) (clamped to the image) with weights 1 - |j + 0.5 - centre| /
    max(scale, 1), normalised to sum 1. Unused taps point at pixel 0 with weight 0.
    """
    scale = n_in / n_out
    fs = max(scale, 1.0)
    support = fs
    centre = (np.arange(n_out) + 0.5) * scale
    lo = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centre + support + 0.5).astype(np.int64), n_in)
    k = int((hi - lo).max())
    idx = lo[:, None] + np.arange(k)
    w = np.clip(1 - np.abs((idx + 0.5 - centre[:, None]) / fs), 0, None)
    w[idx >= hi[:, None]] = 0
    w /= w.sum(axis=1, keepdims=True)
    return np.where(w > 0, idx, 0), w


def _apply_taps(x: np.ndarray, axis: int, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    shape = [1] * x.ndim
    shape[axis] = len(idx)
    out = np.zeros(x.shape[:axis] + (len(idx),) + x.shape[axis + 1 :], np.float64)
    for t in range(idx.shape[1]):
        out += np.take(x, idx[:, t], axis=axis) * w[:, t].reshape(shape)
    return out


def resize_bilinear_antialias(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 H×W×3 RGB → uint8 h×w×3, PIL ``Image.resize(BILINEAR)`` semantics (module docstring)."""
    image = _image(image, "resize_bilinear_antialias: image")
    oh, ow = _size(size, "resize_bilinear_antialias: size")
    x = image.astype(np.float64)
    if ow != x.shape[1]:
        x = np.clip(np.rint(_apply_taps(x, 1, *_triangle_taps(x.shape[1], ow))), 0, 255)
    if oh != x.shape[0]:
        x = np.clip(np.rint(_apply_taps(x, 0, *_triangle_taps(x.shape[0], oh))), 0, 255)
    return x.astype(np.uint8)


def sam_image_to_input(image: np.ndarray, size: int, mean: Sequence[float] = SAM_MEAN,
                       std: Sequence[float] = SAM_STD) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 H×W×3 RGB → (float32 1×3×size×size encoder input, (h, w) of the resized image inside it).

    Longest side resized to ``size`` (:func:`resize_bilinear_antialias`, skipped when it already is),
    ``(x - mean) / std`` in float32 with x on the 0..255 scale, then zeros bottom-right up to size×size.
    """
    image = _image(image, "sam_image_to_input: image")
    size = _int(size, "sam_image_to_input: size")
    h, w = image.shape[:2]
    if max(h, w) != size:
        h, w = longest_side_shape(h, w, size)
        image = resize_bilinear_antialias(image, (h, w))
    m, s = _triple(mean, "sam_image_to_input: mean"), _triple(std, "sam_image_to_input: std", positive=True)
    out = np.zeros((1, 3, size, size), np.float32)
    out[0, :, :h, :w] = ((image.astype(np.float32) - m) / s).transpose(2, 0, 1)
    return out, (h, w)


def sam_transform_coords(coords: np.ndarray, original_size: tuple[int, int], frame: int = PROMPT_FRAME) -> np.ndarray:
    """(x, y) pixel coordinates in the original H×W image (any shape ...×2) → float32 in the prompt frame:
    x · w'/W, y · h'/H with (h', w') = :func:`longest_side_shape` (H, W, frame). Not clipped."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim == 0 or coords.shape[-1] != 2 or not np.all(np.isfinite(coords)):
        raise EdgevitError(f"sam_transform_coords: coords must be finite (..., 2) (x, y) values, got shape {coords.shape}")
    h, w = _size(original_size, "sam_transform_coords: original_size")
    nh, nw = longest_side_shape(h, w, frame)
    return (coords * np.array([nw / w, nh / h])).astype(np.float32)


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch bilinear (align_corners=False) taps: src = max((d + 0.5) · n_in/n_out - 0.5, 0)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    x0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    x1 = np.minimum(x0 + 1, n_in - 1)
    t = src - x0
    return np.stack([x0, x1], 1), np.stack([1 - t, t], 1)


def resize_bilinear(x: np.ndarray, size: tuple[int, int], crop: tuple[int, int] | None = None) -> np.ndarray:
    """Bilinear resize of the last two axes of float ``x`` (...×h×w) to ``size`` like
    ``F.interpolate(mode="bilinear", align_corners=False)`` (no antialias), float32 out.

    ``crop`` = (rows, cols) keeps only the top-left rows × cols of the resized result (computed directly).
    """
    x = _array(x, "resize_bilinear: x", (np.float32, np.float64))
    if x.ndim < 2 or 0 in x.shape[-2:]:
        raise EdgevitError(f"resize_bilinear: x has shape {x.shape}; expected ...×h×w with h, w > 0")
    oh, ow = _size(size, "resize_bilinear: size")
    ch, cw = (oh, ow) if crop is None else _size(crop, "resize_bilinear: crop")
    if ch > oh or cw > ow:
        raise EdgevitError(f"resize_bilinear: crop {crop} is larger than size {size}")
    iw, ww = _bilinear_taps(x.shape[-1], ow)
    ih, wh = _bilinear_taps(x.shape[-2], oh)
    y = _apply_taps(x.astype(np.float64), x.ndim - 1, iw[:cw], ww[:cw])
    return _apply_taps(y, x.ndim - 2, ih[:ch], wh[:ch]).astype(np.float32)


def sam_postprocess_masks(low_res: np.ndarray, original_size: tuple[int, int],
                          frame: int = PROMPT_FRAME) -> np.ndarray:
    """Low-res logits float32 K×256×256 → logits K×H×W at ``original_size`` (threshold at 0 for masks).

    As upstream: bilinear to frame×frame, crop to the resized image (:func:`longest_side_shape`), bilinear
    to (H, W).
    """
    low_res = _array(low_res, "sam_postprocess_masks: low_res", (np.float32, np.float64), (3,))
    h, w = _size(original_size, "sam_postprocess_masks: original_size")
    up = resize_bilinear(low_res, (frame, frame), crop=longest_side_shape(h, w, frame))
    return resize_bilinear(up, (h, w))
