"""File I/O used across edgevit: images and label maps in, atomic PNG/JSON/text out.

Reads fail with a one-line :class:`~edgevit.errors.EdgevitError` naming the file. Every writer goes
through :func:`atomic_write`, so a crash or an exception never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import EdgevitError

PathLike = str | os.PathLike[str]

# Modes holding one integer channel; anything else is not a label map.
_LABEL_MODES = ("P", "L", "1", "I;16", "I;16L", "I;16B", "I")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I")


def _why(exc: BaseException) -> str:
    """A short reason for an open/decode failure, without the path Python already put in it."""
    if isinstance(exc, UnidentifiedImageError):
        return "cannot identify image file"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, Image.DecompressionBombError):
        return "too many pixels"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _open_loaded(path: PathLike, what: str) -> Image.Image:
    """Open and fully decode ``path`` (so truncation is detected here), or raise EdgevitError."""
    try:
        with Image.open(path) as im:
            im.load()
            # Multi-frame files (GIF, APNG, TIFF): keep the first frame only.
            return im.copy()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        message = f"{path}: not a readable {what} ({_why(exc)}); pass a PNG/JPEG file"
        raise EdgevitError(message) from exc


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as RGB.

    Returns a C-contiguous ``uint8`` array of shape ``(H, W, 3)``, values 0..255. Palette, gray,
    bilevel and CMYK images are converted to RGB; an alpha channel is dropped (not composited);
    16-bit gray is scaled to 8 bit (``round(v / 257)``). EXIF orientation is *not* applied: pixels
    come out as stored, matching how label maps are stored.
    """
    im = _open_loaded(path, "image")
    if im.mode in _SIXTEEN_BIT_MODES:
        wide = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def read_label(path: PathLike) -> np.ndarray:
    """Read a label map exactly as stored.

    Returns a 2-D ``(H, W)`` integer array: ``uint8`` for "P" (palette indices, not colours), "L"
    and "1" (0/1) images, ``uint16`` for 16-bit gray ("I;16"), ``int32`` for 32-bit integer images.
    Colour (RGB/RGBA) or float label files raise :class:`EdgevitError`.
    """
    im = _open_loaded(path, "label map")
    if im.mode not in _LABEL_MODES:
        raise EdgevitError(
            f"{path}: label map has image mode {im.mode!r}, not one channel of integer class indices; "
            "pass a single-channel PNG (mode P, L or I;16), not a colour-coded one"
        )
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)  # native byte order for I;16B
    if im.mode == "I":
        return np.asarray(im).astype(np.int32)
    return np.asarray(im, dtype=np.uint8)


@contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it appears complete or not at all.

    Yields a file object on a fresh temporary file in the same directory (missing parent
    directories are created); on normal exit the data is flushed, fsync'ed and ``os.replace``'d
    onto ``path``. On an exception the temporary file is removed and ``path`` is left untouched.
    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (UTF-8 text). The new file gets the usual
    ``0o666 & ~umask`` permissions.
    """
    if mode not in ("wb", "w", "wt"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_png(path: PathLike, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write ``array`` as a PNG, atomically.

    ``array``: ``uint8`` ``(H, W)`` (gray, or palette indices when ``palette`` is given),
    ``uint8`` ``(H, W, 3)`` RGB, or ``uint16`` ``(H, W)`` (16-bit gray). ``palette``: ``(N, 3)``
    ``uint8`` colours, N ≤ 256, for label maps; indices without a colour show as black.
    """
    array = np.ascontiguousarray(array)
    two_d = array.ndim == 2
    rgb = array.ndim == 3 and array.shape[2] == 3
    if not ((array.dtype == np.uint8 and (two_d or rgb)) or (array.dtype == np.uint16 and two_d)):
        raise EdgevitError(
            f"{path}: cannot write a {array.dtype} array of shape {array.shape} as PNG; "
            "pass uint8 (H, W) / (H, W, 3) or uint16 (H, W)"
        )
    im = Image.fromarray(array)
    if palette is not None:
        colours = np.asarray(palette)
        if not (two_d and array.dtype == np.uint8):
            raise EdgevitError(
                f"{path}: a palette needs a uint8 (H, W) index map, "
                f"got {array.dtype} {array.shape}; write label maps as uint8"
            )
        if colours.ndim != 2 or colours.shape[1] != 3 or not 1 <= len(colours) <= 256:
            raise EdgevitError(
                f"{path}: palette must have shape (N, 3) with 1 <= N <= 256, got {colours.shape}; "
                "pass LabelSet.palette"
            )
        full = np.zeros((256, 3), np.uint8)  # every index gets a PLTE entry, so decoders never balk
        full[: len(colours)] = colours.astype(np.uint8)
        im.putpalette(full.tobytes())
    with atomic_write(path, "wb") as f:
        im.save(f, format="PNG")


def read_json_object(path: PathLike, missing: str, invalid: str = "re-create it") -> dict[str, Any]:
    """The JSON object stored in ``path``; each failure is one :class:`EdgevitError` line naming the file.

    ``missing``: what to do when the file is absent; ``invalid``: what to do when it is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgevitError(f"{path}: missing; {missing}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgevitError(f"{path}: not valid JSON ({exc.__class__.__name__}: {str(exc)[:120]}); {invalid}") from None
    if not isinstance(data, dict):
        raise EdgevitError(f"{path}: expected a JSON object, got {type(data).__name__}; {invalid}")
    return data


def _json_default(obj: Any) -> Any:
    """Make numpy scalars/arrays and paths JSON-serialisable."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (indent 2, sorted keys, trailing newline), atomically.

    numpy scalars/arrays and paths are converted; NaN/Infinity are refused (``ValueError``)
    because they are not valid JSON: use ``None``.
    """
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=_json_default)
    write_text(path, text + "\n")


def write_text(path: PathLike, text: str) -> None:
    """Write ``text`` as UTF-8, atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)
