"""Super-resolution evaluation with the field's conventions (as the usual MATLAB/BasicSR evaluation code).

Per image: HR mod-cropped to the scale; LR from ``LR_bicubic/X{s}/<name>x{s}.png`` when the dataset has it,
else MATLAB-bicubic downscaling of the HR (:func:`edgevit.processing.resize_matlab`); the prediction is
quantised to uint8; PSNR and SSIM on BT.601 luma (MATLAB ``rgb2ycbcr``: Y = 16 + 65.481 R + 128.553 G +
24.966 B, RGB in [0, 1], Y not rounded) with ``scale`` pixels shaved from each border; SSIM as Wang et al.
(11×11 gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255, 'valid' filtering, mean of the map).
Grayscale files are fed to the model as R = G = B and scored on full-range luma (Y - 16)·255/219, which is
the gray value itself for a gray prediction (the usual code compares gray images directly; it matters:
1.3 dB on Set14's bridge). 16-bit gray PNGs are rounded to 8 bits; 16-bit colour PNGs raise an error.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from .. import processing
from ..errors import EdgevitError
from ..models.sr_common import SRContract
from .data import image_files, is_grayscale_file, read_sr_image
from .tiling import SRFn, as_sr_fn, upscale_tiled

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2, PEAK = 11, 1.5, 0.01, 0.03, 255.0


def psnr(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """PSNR in dB of two same-shape arrays on a ``peak`` scale; ``inf`` when identical."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of 2-D ``x`` with the 1-D kernel ``g`` along both axes."""
    n = len(g)
    rows = sum(g[i] * x[i : x.shape[0] - n + 1 + i] for i in range(n))
    return sum(g[i] * rows[:, i : x.shape[1] - n + 1 + i] for i in range(n))


def ssim(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """Mean SSIM (Wang et al. 2004) of two 2-D images on a ``peak`` scale; 1.0 when identical."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise EdgevitError(f"ssim: expected two 2-D images of one shape, got {a.shape} and {b.shape}")
    if min(a.shape) < SSIM_WINDOW:
        raise EdgevitError(f"ssim: image is {a.shape[0]}x{a.shape[1]} after border cropping; SSIM needs at least "
                           f"{SSIM_WINDOW}x{SSIM_WINDOW}")
    g = _gaussian_window()
    c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(m.mean())


def sr_metrics(sr: np.ndarray, hr: np.ndarray, scale: int, gray: bool = False) -> tuple[float, float]:
    """(PSNR, SSIM) on Y of uint8 H×W×3 ``sr`` against ``hr``, ``scale`` pixels shaved at each border.
    ``gray``: the reference is a grayscale image; compare full-range luma (Y - 16)·255/219 instead."""
    if sr.shape != hr.shape:
        raise EdgevitError(f"sr_metrics: prediction {sr.shape} and reference {hr.shape} differ in shape")
    ys, yh = processing.rgb_to_y(sr), processing.rgb_to_y(hr)
    if gray:
        ys, yh = (ys - 16) * (255 / 219), (yh - 16) * (255 / 219)
    if scale:
        ys, yh = ys[scale:-scale, scale:-scale], yh[scale:-scale, scale:-scale]
    return psnr(ys, yh), ssim(ys, yh)


def matlab_bicubic(scale: int) -> SRFn:
    """The "Bicubic" floor row: MATLAB ``imresize(lr, scale, 'bicubic')`` of the uint8 LR, as an SR callable."""

    def fn(x: np.ndarray) -> np.ndarray:
        out = []
        for im in x:
            lr = np.clip(np.rint(im.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
            up = processing.resize_matlab(lr, (lr.shape[0] * scale, lr.shape[1] * scale))
            out.append(up.transpose(2, 0, 1).astype(np.float32) / 255)
        return np.stack(out)

    return fn


def upscale_image(model: nn.Module | SRFn, lr: np.ndarray, contract: SRContract | None) -> np.ndarray:
    """uint8 h×w×3 ``lr`` → uint8 (s·h)×(s·w)×3 (rounded, clipped): tiled by ``contract``
    (:func:`~edgevit.sr.tiling.upscale_tiled`), or one call on the whole image when ``contract`` is None."""
    x = (lr.transpose(2, 0, 1)[None].astype(np.float32) / 255).copy()
    y = (upscale_tiled(model, x, contract) if contract is not None else as_sr_fn(model)(x))[0]
    return np.clip(np.rint(y.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)


@dataclass
class SREvaluation:
    """Per-image and mean PSNR/SSIM (Y channel) of one model on one dataset."""

    name: str
    dataset: str
    scale: int
    images: list[dict[str, Any]] = field(default_factory=list)

    @property
    def psnr(self) -> float:
        return float(np.mean([r["psnr"] for r in self.images]))

    @property
    def ssim(self) -> float:
        return float(np.mean([r["ssim"] for r in self.images]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dataset": self.dataset, "scale": self.scale, "psnr_y": round(self.psnr, 4),
                "ssim_y": round(self.ssim, 5), "images": self.images,
                "protocol": "Y (BT.601, MATLAB rgb2ycbcr), scale px shaved, HR mod-cropped, uint8 output"}

    def table(self) -> str:
        lines = [f"{self.name} on {self.dataset} x{self.scale}", "| image | size | LR | PSNR-Y | SSIM-Y |", "|---|---|---|---|---|"]
        lines += [f"| {r['image']} | {r['size']} | {r['lr']} | {r['psnr']:.2f} | {r['ssim']:.4f} |" for r in self.images]
        lines.append(f"| mean | | | {self.psnr:.2f} | {self.ssim:.4f} |")
        return "\n".join(lines)


def load_pairs(data_dir: str | os.PathLike[str], scale: int) -> list[tuple[str, np.ndarray, np.ndarray, str, bool]]:
    """(name, HR uint8 mod-cropped, LR uint8, LR source, HR is grayscale) for each image of an SR dataset.

    ``data_dir`` holds ``HR/`` (and optionally ``LR_bicubic/X{s}/<name>x{s}.png``), or the HR images
    directly. Missing LR files are made by MATLAB-bicubic downscaling.
    """
    root = Path(data_dir)
    hr_dir = root / "HR" if (root / "HR").is_dir() else root
    lr_dir = root / "LR_bicubic" / f"X{scale}"
    out = []
    for path in image_files(hr_dir):
        hr = read_sr_image(path)
        h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
        if h == 0 or w == 0:
            raise EdgevitError(f"{path}: {hr.shape[0]}x{hr.shape[1]} is smaller than the scale x{scale}")
        hr = np.ascontiguousarray(hr[:h, :w])
        lr_path = lr_dir / f"{path.stem}x{scale}.png"
        if lr_path.is_file():
            lr, source = read_sr_image(lr_path), "file"
            if lr.shape != (h // scale, w // scale, 3):
                raise EdgevitError(f"{lr_path}: is {lr.shape[0]}x{lr.shape[1]}, expected {h // scale}x{w // scale} "
                                   f"(the mod-cropped HR / {scale})")
        else:
            lr, source = processing.resize_matlab(hr, (h // scale, w // scale)), "bicubic"
        out.append((path.stem, hr, lr, source, is_grayscale_file(path)))
    return out


def evaluate_sr(model_or_callable: nn.Module | SRFn | str, data_dir: str | os.PathLike[str], scale: int,
                contract: SRContract | None = None, name: str | None = None, progress: bool = True) -> SREvaluation:
    """PSNR/SSIM on Y of an SR model over the dataset at ``data_dir`` (see :func:`load_pairs`).

    ``model_or_callable``: an SR ``nn.Module`` (its ``contract`` is used), a callable with the SR contract
    (float32 numpy N×3×h×w in [0, 1] → N×3×(s·h)×(s·w); pass ``contract`` to run it in tiles, e.g. a
    fixed-size artifact; without one it gets each whole image), or ``"bicubic"`` for the MATLAB bicubic floor row. Images run through
    :func:`~edgevit.sr.tiling.upscale_tiled`, so fixed-size artifacts work unchanged.
    """
    if scale not in (2, 3, 4) or isinstance(scale, bool):
        raise EdgevitError(f"evaluate_sr: scale must be 2, 3 or 4, got {scale!r}")
    if isinstance(model_or_callable, str):
        if model_or_callable != "bicubic":
            raise EdgevitError(f"evaluate_sr: the only named method is 'bicubic', got {model_or_callable!r}")
        fn, name = matlab_bicubic(scale), name or "bicubic (MATLAB imresize)"
    else:
        fn = model_or_callable
    contract = contract or getattr(fn, "contract", None)
    if contract is not None and contract.scale != scale:
        raise EdgevitError(f"evaluate_sr: the model upscales x{contract.scale}, the evaluation asks for x{scale}")
    pairs = load_pairs(data_dir, scale)
    result = SREvaluation(name or getattr(fn, "model_id", "model"), str(data_dir), scale)
    for stem, hr, lr, source, gray in tqdm(pairs, desc="eval-sr", unit="img", disable=not progress):
        sr = upscale_image(fn, lr, contract)
        if sr.shape != hr.shape:
            raise EdgevitError(f"evaluate_sr: the model turned a {lr.shape[0]}x{lr.shape[1]} input into "
                               f"{sr.shape[0]}x{sr.shape[1]}, expected {hr.shape[0]}x{hr.shape[1]} (x{scale})")
        p, s = sr_metrics(sr, hr, scale, gray)
        result.images.append({"image": stem, "size": f"{hr.shape[0]}x{hr.shape[1]}", "lr": source, "gray": gray,
                              "psnr": round(p, 4), "ssim": round(s, 5)})
    return result


def eval_sr(model: str, data: str | os.PathLike[str], scale: int, weights: str | os.PathLike[str] | None = None,
            out: str | os.PathLike[str] | None = None, progress: bool = True) -> list[SREvaluation]:
    """``edgevit eval-sr``: the bicubic floor row, then ``model`` (a registered SR id, with ``weights``), on
    ``data`` at ``scale``; writes ``eval_sr.json`` and ``eval_sr.md`` into ``out`` when given."""
    from .. import io
    from ..models.registry import create_model

    results = [evaluate_sr("bicubic", data, scale, progress=progress)]
    if model != "bicubic":
        m = create_model(model, weights=weights)
        if not isinstance(getattr(m, "contract", None), SRContract):
            raise EdgevitError(f"eval-sr: {model} is a {m.contract.task} model, not super-resolution")
        results.append(evaluate_sr(m, data, scale, progress=progress))
    if out is not None:
        io.write_json(Path(out) / "eval_sr.json", {"weights": None if weights is None else os.fspath(weights),
                                                   "results": [r.to_dict() for r in results]})
        io.write_text(Path(out) / "eval_sr.md", "\n\n".join(r.table() for r in results) + "\n")
    return results
