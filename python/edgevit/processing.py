"""Pixel transforms of the EfficientViT segmentation protocol: the numpy reference for every port.

Layouts: images are RGB uint8 H×W×3 (HWC, values 0..255); model inputs float32 1×3×H×W (NCHW,
C-contiguous); logits float32 C×h×w or 1×C×h×w; label maps H×W uint8 (C <= 255) or uint16.
Everything is deterministic numpy. Native ports (C++/Kotlin/Swift) are tested against the files
:func:`write_reference_vectors` writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import EdgevitError

BICUBIC_A: float = -0.75  # Keys cubic-convolution parameter, as in PyTorch and OpenCV
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _int(value: object, what: str) -> int:
    """``value`` as a positive Python int, or EdgevitError."""
    if not _is_int(value) or value <= 0:
        raise EdgevitError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def _size(size: Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(size, str | bytes) or not isinstance(size, Sequence) or len(size) != 2:
        raise EdgevitError(f"{what} must be (height, width), got {size!r}")
    return _int(size[0], f"{what} height"), _int(size[1], f"{what} width")


def _array(x: object, what: str, dtypes: tuple[type, ...], ndims: tuple[int, ...] = ()) -> np.ndarray:
    """``x`` if it is an ndarray with one of ``dtypes`` (empty: any integer) and ``ndims`` (empty: any)."""
    if not isinstance(x, np.ndarray):
        raise EdgevitError(f"{what} must be a numpy array, got {type(x).__name__}")
    if (x.dtype not in dtypes) if dtypes else (x.dtype.kind not in "ui"):
        expected = " or ".join(np.dtype(d).name for d in dtypes) if dtypes else "an integer dtype"
        raise EdgevitError(f"{what} has dtype {x.dtype}; expected {expected}")
    if ndims and x.ndim not in ndims:
        raise EdgevitError(f"{what} has shape {x.shape}; expected {' or '.join(map(str, ndims))} dimensions")
    return x


def _image(image: object, what: str) -> np.ndarray:
    image = _array(image, what, (np.uint8,), (3,))
    if image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise EdgevitError(f"{what} has shape {image.shape}; expected H×W×3 RGB with H, W > 0")
    return image


# --- resize policies ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FixedSize:
    """Resize every image to exactly ``height`` × ``width`` pixels (Cityscapes: 1024 × 2048)."""

    height: int
    width: int

    def __post_init__(self) -> None:
        _size((self.height, self.width), "FixedSize")


@dataclass(frozen=True)
class ShortSide:
    """Short side to ``short``; long side scaled by the aspect ratio, rounded UP to a multiple of
    ``multiple`` (ADE20K: 512, 32). A square image counts as portrait (long side = height)."""

    short: int = 512
    multiple: int = 32

    def __post_init__(self) -> None:
        _int(self.short, "ShortSide.short")
        _int(self.multiple, "ShortSide.multiple")


ResizePolicy = FixedSize | ShortSide
CITYSCAPES = FixedSize(1024, 2048)
ADE20K = ShortSide(512, 32)


def policy_to_dict(policy: ResizePolicy) -> dict[str, object]:
    """JSON form of a resize policy: ``{"kind": "FixedSize" | "ShortSide", <fields>}``."""
    return {"kind": type(policy).__name__, **asdict(policy)}


def target_size(height: int, width: int, policy: ResizePolicy) -> tuple[int, int]:
    """Model input size (height, width) for an image of ``height`` × ``width`` under ``policy``.

    ShortSide evaluates upstream's IEEE-double expression in exactly this order: if h < w,
    (short, ceil(w / h * short / multiple) * multiple), else (ceil(h / w * short / multiple) * multiple, short).
    """
    h, w = _size((height, width), "target_size: image size")
    if isinstance(policy, FixedSize):
        return policy.height, policy.width
    if isinstance(policy, ShortSide):
        s, m = policy.short, policy.multiple
        return (s, math.ceil(w / h * s / m) * m) if h < w else (math.ceil(h / w * s / m) * m, s)
    raise EdgevitError(f"target_size: policy must be FixedSize or ShortSide, got {type(policy).__name__}")


# --- bicubic resize ----------------------------------------------------------------------------
def bicubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (n_out, 4) int64 and weights (n_out, 4) float64 resizing one axis n_in -> n_out.

    src = (d + 0.5) * n_in / n_out - 0.5 is evaluated exactly in integers: num = (2d + 1) * n_in - n_out,
    den = 2 * n_out, x0 = floor(num / den), t = (num - x0 * den) / den in [0, 1) (one float64 division).
    Taps are x0-1 .. x0+2 clamped to [0, n_in - 1] (no antialiasing); weights, with a = BICUBIC_A:
    far(t + 1), near(t), near(1 - t), far(2 - t), near(x) = ((a + 2) * x - (a + 3)) * x * x + 1,
    far(x) = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a (evaluated in exactly this order).
    """
    n_in, n_out = _int(n_in, "bicubic_taps: n_in"), _int(n_out, "bicubic_taps: n_out")
    d = np.arange(n_out, dtype=np.int64)
    num, den = (2 * d + 1) * n_in - n_out, 2 * n_out
    x0 = num // den  # floor, also for the negative sources next to the first pixel
    t = (num - x0 * den) / den
    a = BICUBIC_A

    def near(x: np.ndarray) -> np.ndarray:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    return np.clip(x0[:, None] + np.arange(-1, 3), 0, n_in - 1), weights


def _resize_axis(x: np.ndarray, axis: int, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One separable pass in float64: out[d] = ((w0 * x[i0] + w1 * x[i1]) + w2 * x[i2]) + w3 * x[i3]."""
    shape = [1] * x.ndim
    shape[axis] = len(index)
    out = np.take(x, index[:, 0], axis=axis)
    out *= weights[:, 0].reshape(shape)
    for k in range(1, 4):
        tap = np.take(x, index[:, k], axis=axis)
        tap *= weights[:, k].reshape(shape)
        out += tap
    return out


def resize_bicubic(x: np.ndarray, size: tuple[int, int], axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Bicubic resize of the two ``axes`` of ``x`` (any other axes are carried along) to ``size``.

    ``size`` is (length along axes[0], length along axes[1]), e.g. (H, W) for an H×W×C image.
    Equals PyTorch ``F.interpolate(mode="bicubic", align_corners=False)`` and ``cv2.INTER_CUBIC``
    (see :func:`bicubic_taps`). Computed in float64, axes[1] ("width") pass first, then axes[0].
    uint8 in -> uint8 out, np.rint then clip to [0, 255] (OpenCV's fixed-point uint8 path differs by
    at most 1 on a small fraction of pixels); float32/float64 in -> float32 out, not clipped.
    """
    x = _array(x, "resize_bicubic: x", (np.uint8, np.float32, np.float64))
    if x.ndim < 2:
        raise EdgevitError(f"resize_bicubic: x has shape {x.shape}; expected at least 2 dimensions")
    if not isinstance(axes, Sequence) or len(axes) != 2 or not all(_is_int(a) for a in axes):
        raise EdgevitError(f"resize_bicubic: axes must be two ints, got {axes!r}")
    a0, a1 = (int(a) % x.ndim if -x.ndim <= a < x.ndim else -1 for a in axes)
    if -1 in (a0, a1) or a0 == a1:
        raise EdgevitError(f"resize_bicubic: axes {axes!r} must be two distinct axes of a {x.ndim}-d array")
    oh, ow = _size(size, "resize_bicubic: size")
    if x.shape[a0] == 0 or x.shape[a1] == 0:
        raise EdgevitError(f"resize_bicubic: x has shape {x.shape}; the resized axes must be non-empty")
    y = np.asarray(x, dtype=np.float64)
    if y.shape[a1] != ow:  # width pass first, like OpenCV and PyTorch
        y = _resize_axis(y, a1, *bicubic_taps(y.shape[a1], ow))
    index, weights = bicubic_taps(y.shape[a0], oh)
    out = np.empty(y.shape[:a0] + (oh,) + y.shape[a0 + 1 :], np.uint8 if x.dtype == np.uint8 else np.float32)
    step = max(1, 2**20 // max(1, y.size // y.shape[a0]))  # height pass in blocks of ~1M values
    for r in range(0, oh, step):
        rows = (slice(None),) * a0 + (slice(r, r + step),)
        block = y[rows] if y.shape[a0] == oh else _resize_axis(y, a0, index[r : r + step], weights[r : r + step])
        out[rows] = np.clip(np.rint(block), 0, 255) if out.dtype == np.uint8 else block
    return out


# --- MATLAB-compatible bicubic resize and luma (super-resolution evaluation) --------------------
MATLAB_CUBIC_A: float = -0.5  # MATLAB imresize's cubic kernel parameter (differs from BICUBIC_A)


def _matlab_cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def matlab_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix of MATLAB ``imresize(..., 'bicubic')`` along one axis.

    Scale s = n_out / n_in. Output pixel x (1-based) samples u = x / s + (1 - 1/s) / 2; kernel a = -0.5;
    when shrinking (s < 1) the kernel is widened to 4 / s and scaled by s (antialiasing). Weights are
    normalised to sum 1; taps beyond the border are mirrored (symmetric, edge pixel repeated).
    """
    n_in, n_out = _int(n_in, "matlab_resize_matrix: n_in"), _int(n_out, "matlab_resize_matrix: n_out")
    s = n_out / n_in
    width = 4.0 / s if s < 1 else 4.0
    x = np.arange(1, n_out + 1, dtype=np.float64)
    u = x / s + 0.5 * (1 - 1 / s)
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(math.ceil(width) + 2)[None, :]
    dist = u[:, None] - idx
    w = s * _matlab_cubic(s * dist) if s < 1 else _matlab_cubic(dist)
    w /= w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    src = mirror[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.repeat(np.arange(n_out), idx.shape[1]), src.ravel()), w.ravel())
    return m


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's double -> uint8: round half away from zero, saturate."""
    return np.clip(np.floor(x + 0.5), 0, 255)


def resize_matlab(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """MATLAB ``imresize(image, [h w], 'bicubic')`` (antialiased when shrinking) of H×W or H×W×C ``image``.

    The standard way SR benchmarks make their low-resolution inputs (``LR_bicubic``) and the "Bicubic" row.
    Height is resized first, then width (MATLAB's order for equal scale factors). uint8 in -> uint8 out,
    rounded after each pass like MATLAB's uint8 path; float in -> float32 out, not rounded or clipped.
    """
    image = _array(image, "resize_matlab: image", (np.uint8, np.float32, np.float64), (2, 3))
    oh, ow = _size(size, "resize_matlab: size")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise EdgevitError(f"resize_matlab: image has shape {image.shape}; expected H, W > 0")
    y = image.astype(np.float64)
    for axis, n in ((0, oh), (1, ow)):
        m = matlab_resize_matrix(y.shape[axis], n)
        y = np.moveaxis(np.tensordot(m, np.moveaxis(y, axis, 0), axes=1), 0, axis)
        if image.dtype == np.uint8:
            y = _round_uint8(y)
    return y.astype(np.uint8) if image.dtype == np.uint8 else y.astype(np.float32)


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """BT.601 luma as MATLAB ``rgb2ycbcr``: H×W×3 RGB (uint8 0..255, or float in [0, 1]) -> float64 H×W
    Y = 16 + (65.481 R + 128.553 G + 24.966 B) with R, G, B in [0, 1]; Y in [16, 235], not rounded."""
    image = _array(image, "rgb_to_y: image", (np.uint8, np.uint16, np.float32, np.float64), (3,))
    if image.shape[2] != 3:
        raise EdgevitError(f"rgb_to_y: image has shape {image.shape}; expected H×W×3 RGB")
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(image.dtype, 1.0)
    rgb = image.astype(np.float64) / scale
    return 16.0 + rgb @ np.array([65.481, 128.553, 24.966])


# --- model input and output --------------------------------------------------------------------
def _triple(values: Sequence[float], what: str, positive: bool = False) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
        raise EdgevitError(f"{what} must be 3 finite{' positive' if positive else ''} floats (R, G, B), got {values!r}")
    return arr.astype(np.float32)


def normalize(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """uint8 H×W×3 RGB -> float32 H×W×3: (image / 255 - mean) / std, every step in float32.

    ``mean``/``std`` are per-channel RGB in the [0, 1] scale, rounded to float32 first.
    """
    image = _image(image, "normalize: image")
    m, s = _triple(mean, "normalize: mean"), _triple(std, "normalize: std", positive=True)
    return (image.astype(np.float32) / np.float32(255) - m) / s


def image_to_input(
    image: np.ndarray, policy: ResizePolicy, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """uint8 H×W×3 RGB -> float32 1×3×h×w (C-contiguous) model input.

    Resize in uint8 to :func:`target_size` (skipped when it already matches), then :func:`normalize`.
    """
    image = _image(image, "image_to_input: image")
    size = target_size(image.shape[0], image.shape[1], policy)
    if size != image.shape[:2]:
        image = resize_bicubic(image, size)
    return np.ascontiguousarray(normalize(image, mean, std).transpose(2, 0, 1)[None])


def logits_to_labels(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Logits float32 (or float64) C×h×w or 1×C×h×w -> label map H×W, ``size`` = (H, W).

    Bicubic upsampling as :func:`resize_bicubic` (float32 result, no rounding), then argmax over C
    (the first maximum wins on ties). Labels are uint8 when C <= 255, else uint16 (C <= 65536).
    """
    logits = _array(logits, "logits_to_labels: logits", (np.float32, np.float64), (3, 4))
    if logits.ndim == 4:
        if logits.shape[0] != 1:
            raise EdgevitError(f"logits_to_labels: logits has shape {logits.shape}; expected batch size 1")
        logits = logits[0]
    c = logits.shape[0]
    if not 1 <= c <= 65536:
        raise EdgevitError(f"logits_to_labels: logits has {c} classes; expected 1 to 65536")
    scores = resize_bicubic(logits, size, axes=(1, 2))
    return scores.argmax(axis=0).astype(np.uint8 if c <= 255 else np.uint16)


# --- visualisation -----------------------------------------------------------------------------
def _colors(what: str, labels: np.ndarray, palette: np.ndarray, ignore_index: int | None):
    """(palette colour per pixel H×W×3 uint8, ignored mask H×W bool); ignored pixels get palette[0]."""
    labels = _array(labels, f"{what}: labels", (), (2,))
    palette = _array(palette, f"{what}: palette", (np.uint8,), (2,))
    if palette.shape[0] == 0 or palette.shape[1] != 3:
        raise EdgevitError(f"{what}: palette has shape {palette.shape}; expected (C, 3) with C >= 1")
    if ignore_index is not None and not _is_int(ignore_index):
        raise EdgevitError(f"{what}: ignore_index must be an int or None, got {ignore_index!r}")
    ignored = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, bool)
    used = labels[~ignored]
    if used.size and (used.min() < 0 or used.max() >= len(palette)):
        bad = used.min() if used.min() < 0 else used.max()
        raise EdgevitError(f"{what}: label {bad} is outside the palette [0, {len(palette)}) and not ignore_index")
    return palette[np.where(ignored, 0, labels)], ignored


def colorize(
    labels: np.ndarray, palette: np.ndarray, ignore_index: int | None = 255, ignore_color: Sequence[int] = (0, 0, 0)
) -> np.ndarray:
    """Label map H×W (any integer dtype) + palette (C, 3) uint8 -> RGB uint8 H×W×3.

    Pixels equal to ``ignore_index`` (None: no such label) get ``ignore_color``; it takes precedence
    over a palette entry with the same index. Any other label must be in [0, C).
    """
    color = np.asarray(ignore_color)
    if color.shape != (3,) or color.dtype.kind not in "ui" or color.min() < 0 or color.max() > 255:
        raise EdgevitError(f"colorize: ignore_color must be 3 ints in [0, 255], got {ignore_color!r}")
    out, ignored = _colors("colorize", labels, palette, ignore_index)
    out[ignored] = color.astype(np.uint8)
    return out


def overlay(
    image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: int = 128, ignore_index: int | None = 255
) -> np.ndarray:
    """Blend label colours over an RGB uint8 H×W×3 image with integer ``alpha`` in [0, 255].

    Labelled pixels: (color * alpha + image * (255 - alpha) + 127) // 255 (exact integer math);
    pixels equal to ``ignore_index`` keep the image. Returns uint8 H×W×3.
    """
    image = _image(image, "overlay: image")
    if not _is_int(alpha) or not 0 <= alpha <= 255:
        raise EdgevitError(f"overlay: alpha must be an int in [0, 255], got {alpha!r}")
    color, ignored = _colors("overlay", labels, palette, ignore_index)
    if labels.shape != image.shape[:2]:
        raise EdgevitError(f"overlay: labels {labels.shape} and image {image.shape} differ in H×W")
    a = np.uint32(alpha)
    blend = (color.astype(np.uint32) * a + image.astype(np.uint32) * (np.uint32(255) - a) + 127) // 255
    return np.where(ignored[..., None], image, blend.astype(np.uint8))


# --- reference vectors for native ports --------------------------------------------------------
def _pattern(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic uint8 noise (a splitmix64-style hash of the flat index): same on every platform."""
    x = np.arange(math.prod(shape), dtype=np.uint64) + np.uint64(seed << 32)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x ^= x >> np.uint64(shift)
        x *= np.uint64(mult)
    return (x >> np.uint64(56)).astype(np.uint8).reshape(shape)


def _logits(c: int, h: int, w: int, size: tuple[int, int]) -> np.ndarray:
    """Pattern logits (multiples of 1/64) whose upsampled top-2 margin is >= 1e-3 at every pixel."""
    for seed in range(100, 1000):
        x = (_pattern((c, h, w), seed).astype(np.float32) - 127.5) / 64
        if c > 255:  # let classes >= 256 win, to exercise uint16 labels
            p = np.arange(h * w)
            x[256 + p % (c - 256), p // w, p % w] += 4
        top2 = np.sort(resize_bicubic(x, size, axes=(1, 2)), axis=0)[-2:]
        if (top2[1] - top2[0]).min() >= 1e-3:
            return x
    raise AssertionError("no pattern seed gives a clear argmax")  # unreachable for the cases below


def write_reference_vectors(out_dir: str | Path) -> list[Path]:
    """Write small deterministic cases for native ports to ``out_dir``; returns the paths written.

    ``index.json`` lists ``cases``: ``output == op(**inputs, **params)`` where ``op`` names a function
    of this module, ``inputs``/``output`` name .npy files, ``params`` are JSON (a policy is
    {"kind": "FixedSize" | "ShortSide", fields...}) and ``atol`` is the allowed difference (0: exact).
    ``target_size`` lists size cases. Logits cases keep a top-2 margin >= 1e-3 after upsampling.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    px, mean_std = _pattern, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    labels = np.where(px((4, 5), 11) < 40, 255, px((4, 5), 12) % 6).astype(np.uint8)
    palette, logits, logits16 = px((6, 3), 13), _logits(5, 4, 6, (9, 11)), _logits(300, 2, 3, (3, 5))
    specs = [  # name, op, inputs, params
        ("resize_u8_up", "resize_bicubic", {"x": px((5, 7, 3), 1)}, {"size": (9, 12), "axes": (0, 1)}),
        ("resize_u8_down", "resize_bicubic", {"x": px((13, 11, 3), 2)}, {"size": (4, 6), "axes": (0, 1)}),
        ("resize_u8_1px", "resize_bicubic", {"x": px((1, 1, 3), 3)}, {"size": (3, 2), "axes": (0, 1)}),
        ("resize_f32_chw", "resize_bicubic", {"x": (px((2, 6, 5), 4) - np.float32(127.5)) / 64},
         {"size": (9, 3), "axes": (1, 2)}),
        ("normalize", "normalize", {"image": px((4, 5, 3), 5)}, mean_std),
        ("input_fixed", "image_to_input", {"image": px((6, 10, 3), 6)}, {"policy": FixedSize(8, 12), **mean_std}),
        ("input_short_side", "image_to_input", {"image": px((10, 6, 3), 7)}, {"policy": ShortSide(8, 4), **mean_std}),
        ("logits_upsample", "resize_bicubic", {"x": logits}, {"size": (9, 11), "axes": (1, 2)}),
        ("labels_u8", "logits_to_labels", {"logits": logits}, {"size": (9, 11)}),
        ("labels_u16", "logits_to_labels", {"logits": logits16}, {"size": (3, 5)}),
        ("colorize", "colorize", {"labels": labels, "palette": palette},
         {"ignore_index": 255, "ignore_color": (1, 2, 3)}),
        ("overlay", "overlay", {"image": px((4, 5, 3), 14), "labels": labels, "palette": palette},
         {"alpha": 100, "ignore_index": 255}),
    ]
    paths, cases = [], []
    for name, op, inputs, params in specs:
        arrays = {**inputs, "output": globals()[op](**inputs, **params)}
        files = {k: f"{name}.{k}.npy" for k in arrays}
        for key, array in arrays.items():
            paths.append(out / files[key])
            np.save(paths[-1], array)
        atol = 1e-5 if op == "resize_bicubic" and arrays["output"].dtype == np.float32 else 0
        cases.append({"name": name, "op": op, "inputs": {k: files[k] for k in inputs}, "params": params,
                      "output": files["output"], "atol": atol})
    sizes = [(512, 683, ADE20K), (683, 512, ADE20K), (512, 512, ADE20K), (375, 500, ADE20K),
             (1024, 2048, CITYSCAPES), (480, 640, CITYSCAPES), (6, 10, ShortSide(8, 4))]
    index = {
        "format": "edgevit.processing reference vectors", "version": 1, "bicubic_a": BICUBIC_A,
        "note": "uint8 resizes use float64 math then rint; OpenCV-style fixed-point ports may differ by 1",
        "cases": cases,
        "target_size": [{"height": h, "width": w, "policy": p, "expected": target_size(h, w, p)} for h, w, p in sizes],
    }
    (out / "index.json").write_text(json.dumps(index, indent=1, default=policy_to_dict) + "\n")
    return [*paths, out / "index.json"]


# --- generative models (HART tokenizer range) ---------------------------------------------------
def image_to_signed(image: np.ndarray) -> np.ndarray:
    """RGB uint8 H×W×3 -> float32 3×H×W in [-1, 1]: ``x / 127.5 - 1`` (the HART tokenizer's input)."""
    image = _image(image, "image_to_signed: image")
    return np.ascontiguousarray((image.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1))


def signed_to_image(x: np.ndarray) -> np.ndarray:
    """float32 3×H×W in [-1, 1] (clipped) -> RGB uint8 H×W×3: ``rint((x + 1) * 127.5)``."""
    x = _array(x, "signed_to_image: x", (np.float32, np.float64), (3,))
    return np.rint((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0).copy()


# --- EfficientViT-SAM ---------------------------------------------------------------------------
# Defined in processing_sam.py (it uses the helpers above, so it is imported last) and re-exported here.
from .processing_sam import (  # noqa: E402
    SAM_MEAN, SAM_STD, longest_side_shape, resize_bilinear, resize_bilinear_antialias, sam_image_to_input,
    sam_postprocess_masks, sam_transform_coords,
)
