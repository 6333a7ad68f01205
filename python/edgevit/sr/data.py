"""Super-resolution data: reading evaluation images, assembling training photos, sampling LR/HR pairs.

Images are uint8 H×W×3 RGB (HWC). Model tensors are float32 N×3×h×w in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import io, processing
from ..errors import EdgevitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Photos bundled in the scikit-image wheel (no download), usable as training HR images. None of them is in
# Set5/Set14. Gray ones are replicated to RGB.
SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry",
    "camera", "brick", "grass", "gravel", "moon", "coins", "clock", "page", "text",
)


def _png_bit_depth(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG header, None for other files."""
    with path.open("rb") as f:
        head = f.read(26)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 26:
        return None
    return head[24], head[25]


def read_sr_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An evaluation image as uint8 H×W×3 RGB (gray replicated to R = G = B; alpha dropped).

    16-bit gray PNGs are reduced to 8 bits by rounding (``round(v / 257)``); 16-bit colour PNGs raise
    :class:`EdgevitError` because Pillow would silently truncate them.
    """
    path = Path(path)
    if path.is_file():
        info = _png_bit_depth(path)
        if info is not None and info[0] == 16 and info[1] in (2, 6):
            raise EdgevitError(f"{path}: 16-bit colour PNG; convert it to 8 bits per channel first "
                               "(16-bit gray PNGs are read, rounded to 8 bits)")
    return io.read_image(path)


def is_grayscale_file(path: str | os.PathLike[str]) -> bool:
    """Whether an image file stores one gray channel (modes L, I;16, I, 1, LA), from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.mode in ("L", "LA", "1", "I", "I;16", "I;16L", "I;16B")


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; EdgevitError when none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgevitError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise EdgevitError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def skimage_photos() -> list[tuple[str, np.ndarray]]:
    """``SKIMAGE_PHOTOS`` as (name, uint8 H×W×3)."""
    try:
        from skimage import data as samples
    except ImportError:
        raise EdgevitError("the 'skimage' training set needs scikit-image; install it with: "
                           "pip install 'edgevit[samples]'") from None
    out = []
    for name in SKIMAGE_PHOTOS:
        image = getattr(samples, name)()
        image = image[0] if isinstance(image, tuple) else image  # stereo pair: left view
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        out.append((f"skimage:{name}", np.ascontiguousarray(image, dtype=np.uint8)))
    return out


def load_training_images(spec: str | Sequence[str], min_size: int = 1) -> list[tuple[str, np.ndarray]]:
    """Training HR photos from ``spec``: comma-separated items, each ``skimage`` (the bundled photos) or a
    folder of images. Images smaller than ``min_size`` on a side are skipped; EdgevitError if none is left."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    images: list[tuple[str, np.ndarray]] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item == "skimage":
            images += skimage_photos()
        else:
            images += [(str(p), io.read_image(p)) for p in image_files(item)]
    kept = [(n, im) for n, im in images if min(im.shape[:2]) >= min_size]
    if not kept:
        raise EdgevitError(f"training data {spec!r}: no image of at least {min_size}x{min_size} pixels")
    return kept


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of H×W×C ``image``: ``k`` in 0..7 (bit 2: transpose, then k % 4 × 90°)."""
    if k & 4:
        image = image.transpose(1, 0, 2)
    return np.rot90(image, k % 4)


def prepare_pairs(images: Sequence[tuple[str, np.ndarray]], scale: int, min_hr: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(HR, LR) uint8 pairs: each image mod-cropped to ``scale`` and downscaled once with
    :func:`edgevit.processing.resize_matlab` (the benchmarks' MATLAB bicubic); images whose mod-cropped side
    is below ``min_hr`` are dropped (EdgevitError if none is left)."""
    pairs = []
    for _, im in images:
        h, w = (im.shape[0] // scale) * scale, (im.shape[1] // scale) * scale
        if min(h, w) >= min_hr:
            hr = np.ascontiguousarray(im[:h, :w])
            pairs.append((hr, processing.resize_matlab(hr, (h // scale, w // scale))))
    if not pairs:
        raise EdgevitError(f"no training image has both sides >= {min_hr} pixels; add larger photos or lower the patch")
    return pairs


def random_pair(hr: np.ndarray, lr: np.ndarray, rng: np.random.Generator, scale: int, patch: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """A random aligned crop of a :func:`prepare_pairs` pair with one of 8 flips/rotations:
    (LR float32 3×patch×patch, HR float32 3×(s·patch)×(s·patch)), both in [0, 1].

    MATLAB bicubic downscaling of a mod-cropped image commutes with flips and 90° rotations (symmetric
    kernel and sampling grid), so transforming the pair equals downscaling the transformed HR crop (up to
    the uint8 rounding between the two passes, ±1).
    Draws, in order: LR row, LR column, dihedral k.
    """
    y0, x0 = int(rng.integers(0, lr.shape[0] - patch + 1)), int(rng.integers(0, lr.shape[1] - patch + 1))
    k = int(rng.integers(0, 8))
    lr_c = dihedral(lr[y0 : y0 + patch, x0 : x0 + patch], k)
    hr_c = dihedral(hr[y0 * scale : (y0 + patch) * scale, x0 * scale : (x0 + patch) * scale], k)
    return (lr_c.transpose(2, 0, 1).astype(np.float32) / 255, hr_c.transpose(2, 0, 1).astype(np.float32) / 255)
