"""Super-resolution as an export task: fixed-size LR tiles in, ×s tiles out, fidelity in PSNR-Y.

An SR artifact takes one ``tile``×``tile`` float32 RGB tile in [0, 1] (input ``image``) and returns the
``scale``× tile (output ``upscaled``); whole images run through :func:`edgevit.sr.tiling.upscale_tiled`.
Fidelity: PSNR/SSIM on Y (:mod:`edgevit.sr.evaluate`) of the artifact and of the eager float model, both
tiled the same way, against the HR images; the gate fails an artifact more than 0.1 dB below float.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgevitError
from ..fidelity import sqnr_db
from ..models.sr_common import SRContract
from .base import LogitsFn


@dataclass
class SRImages:
    """``lr``/``hr``: uint8 H×W×3 pairs (HR mod-cropped; LR from the dataset's files or MATLAB bicubic)."""

    source: str
    names: list[str]
    lr: list[np.ndarray]
    hr: list[np.ndarray]
    gray: list[bool]

    def __len__(self) -> int:
        return len(self.lr)

    def describe(self) -> dict[str, object]:
        import hashlib

        h = hashlib.sha256()
        for name, im in zip(self.names, self.hr):
            h.update(name.encode())
            h.update(im.tobytes())
        return {"source": self.source, "count": len(self), "digest": h.hexdigest(), "labelled": True}


@dataclass
class SRFidelity:
    images: int
    psnr_float: float  # dB, Y channel, mean over images
    psnr_artifact: float
    psnr_drop: float  # dB, float minus artifact
    ssim_float: float
    ssim_artifact: float
    sqnr_vs_float_db: float  # the artifact's uint8 output against the float output's (how close, not how good)

    def summary(self) -> str:
        return (f"PSNR-Y {self.psnr_artifact:.2f} dB vs float {self.psnr_float:.2f} dB (drop {self.psnr_drop:.3f} dB), "
                f"SSIM-Y {self.ssim_artifact:.4f}")

    def to_dict(self) -> dict[str, object]:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SRGate:
    max_psnr_drop: float = 0.1  # dB below the float model

    def failures(self, fid: SRFidelity) -> list[str]:
        if fid.psnr_drop > self.max_psnr_drop:
            return [f"PSNR-Y drop {fid.psnr_drop:.3f} dB > {self.max_psnr_drop} dB"]
        return []

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _tile_of(lr: np.ndarray, tile: int) -> np.ndarray:
    """The centre ``tile``×``tile`` crop of uint8 H×W×3 ``lr`` (edge-padded when smaller) → float32 1×3×t×t."""
    h, w = lr.shape[:2]
    y, x = max((h - tile) // 2, 0), max((w - tile) // 2, 0)
    crop = lr[y : y + tile, x : x + tile]
    crop = np.pad(crop, ((0, tile - crop.shape[0]), (0, tile - crop.shape[1]), (0, 0)), mode="edge")
    return np.ascontiguousarray(crop.transpose(2, 0, 1)[None].astype(np.float32) / 255)


class SuperResolutionTask:
    name = "super-resolution"

    def artifact_contract(self, contract: SRContract, size: tuple[int, int] | None) -> SRContract:
        if size is None:
            return contract
        h, w = size
        if h != w:
            raise EdgevitError(f"--input-size {h}x{w}: super-resolution artifacts take square tiles, e.g. "
                               f"{contract.tile}x{contract.tile}")
        try:
            return dataclasses.replace(contract, tile=h)
        except ValueError as exc:
            raise EdgevitError(f"--input-size {h}x{w}: {exc}") from None

    def io_specs(self, contract: SRContract) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        t, s = contract.tile, contract.scale
        inputs = [{"name": "image", "shape": [1, 3, t, t], "dtype": "float32", "layout": "NCHW"}]
        outputs = [{"name": "upscaled", "shape": [1, 3, s * t, s * t], "dtype": "float32", "layout": "NCHW"}]
        return inputs, outputs

    def load_images(self, root: str | Path, layout: str | None, limit: int | None, contract: SRContract) -> SRImages:
        """An SR dataset (``HR/`` + ``LR_bicubic/X{s}/``) or a folder of photos (LR by MATLAB bicubic)."""
        from ..sr.evaluate import load_pairs

        if layout not in (None, "sr"):
            raise EdgevitError(f"{root}: super-resolution reads HR photos (layout 'sr'), not layout {layout!r}")
        if not Path(root).is_dir():
            raise EdgevitError(f"{root}: folder not found; pass a folder of HR photos or an SR dataset (HR/)")
        pairs = load_pairs(root, contract.scale)[:limit]
        if not pairs:
            raise EdgevitError(f"{root}: no images found; pass a folder of HR photos or an SR dataset (HR/)")
        return SRImages(str(root), [p[0] for p in pairs], [p[2] for p in pairs], [p[1] for p in pairs],
                        [p[4] for p in pairs])

    def model_inputs(self, contract: SRContract, images: SRImages) -> list[np.ndarray]:
        return [_tile_of(lr, contract.tile) for lr in images.lr]

    def measure(self, reference: LogitsFn, candidate: LogitsFn, contract: SRContract, images: SRImages) -> SRFidelity:
        from ..sr.evaluate import sr_metrics, upscale_image

        rows = []
        for lr, hr, gray in zip(images.lr, images.hr, images.gray):
            ref, out = upscale_image(reference, lr, contract), upscale_image(candidate, lr, contract)
            rows.append((*sr_metrics(ref, hr, contract.scale, gray), *sr_metrics(out, hr, contract.scale, gray),
                         sqnr_db(ref.astype(np.float64), out.astype(np.float64))))
        pf, sf, pa, sa, _ = (float(np.mean(c)) for c in zip(*rows))
        vs_float = float(np.mean([r[4] for r in rows]))
        return SRFidelity(len(rows), pf, pa, pf - pa, sf, sa, vs_float)

    def default_gate(self) -> SRGate:
        return SRGate()
