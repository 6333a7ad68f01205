"""Super-resolution as an export task: fixed-size LR tiles in, ×s tiles out, fidelity in PSNR-Y.

An SR artifact takes one ``tile_hw`` (th×tw) float32 RGB tile in [0, 1] (input ``image``) and returns the
``scale``× tile (output ``upscaled``); whole images run through :func:`edgevit.sr.tiling.upscale_tiled`.
Fidelity: PSNR/SSIM on Y (:mod:`edgevit.sr.evaluate`) of the artifact and of the eager float model, both
tiled the same way, against the HR images; the gate fails an artifact more than 0.1 dB below float.

int8 keeps a declared float region (:meth:`SuperResolutionTask.float_regions`): the global interpolation
skip (the modules that upsample the input image itself) and the output tail (residual + skip sum, clamp).
Measured (benchmarks/sr_quant_probe.py, 2026-11-25) on the trained efficientvit-sr-s-x2, Set5 ×2, 256 tiles,
ONNX QDQ (weights per channel, activations symmetric per tensor at conv inputs, MinMax ranges), PSNR-Y drop vs
float: all int8 0.097 dB; skip and tail float 0.015 dB (``--ranges percentile``: 0.107 / 0.027 dB; with
onnxruntime's default Q/DQ placement, ``--placement all``, earlier the same day: 0.206 / 0.020 dB). Why the skip
matters: it carries the whole image (range ~[0, 1] or wider), so one symmetric int8 step is 1/127 to 1/110 of it,
2 to 2.3 grey levels of the 8-bit output, the order of the residual the network adds; the bicubic kernel's small
taps also round to 0 in per-channel int8. The residual branch's inner tensors are small and quantize finely.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgevitError
from ..fidelity import sqnr_db
from ..lowering.float_region import FloatRegion
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


def _tile_of(lr: np.ndarray, tile: tuple[int, int]) -> np.ndarray:
    """The centre th×tw crop of uint8 H×W×3 ``lr`` (edge-padded when smaller) → float32 1×3×th×tw."""
    (h, w), (th, tw) = lr.shape[:2], tile
    y, x = max((h - th) // 2, 0), max((w - tw) // 2, 0)
    crop = lr[y : y + th, x : x + tw]
    crop = np.pad(crop, ((0, th - crop.shape[0]), (0, tw - crop.shape[1]), (0, 0)), mode="edge")
    return np.ascontiguousarray(crop.transpose(2, 0, 1)[None].astype(np.float32) / 255)


class SuperResolutionTask:
    name = "super-resolution"

    def artifact_contract(self, contract: SRContract, size: tuple[int, int] | None) -> SRContract:
        if size is None:
            return contract
        h, w = size
        try:
            return dataclasses.replace(contract, tile=h if h == w else (h, w))
        except ValueError as exc:
            raise EdgevitError(f"--input-size {h}x{w}: {exc}") from None

    def io_specs(self, contract: SRContract) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        (th, tw), s = contract.tile_hw, contract.scale
        inputs = [{"name": "image", "shape": [1, 3, th, tw], "dtype": "float32", "layout": "NCHW"}]
        outputs = [{"name": "upscaled", "shape": [1, 3, s * th, s * tw], "dtype": "float32", "layout": "NCHW"}]
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
        return [_tile_of(lr, contract.tile_hw) for lr in images.lr]

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

    def default_ranges(self, format: str) -> str | None:
        """The format's default (ONNX: MinMax): with the declared float region, Set5 ×2 drop 0.015 dB (s) and
        0.031 dB (t) against 0.027 / 0.034 dB with 99.99th-percentile ranges (module docstring)."""
        return None

    def float_regions(self, model: Any, example: Any) -> list[FloatRegion]:
        """int8 keeps the global skip (:func:`global_skip_modules`) and the output tail in float32."""
        skips = global_skip_modules(model, example)
        return [FloatRegion("global-skip-and-output", tuple(skips), output_tail=True, why=FLOAT_REGION_WHY)]


FLOAT_REGION_WHY = ("the bicubic skip and the output sum carry the whole image: int8 steps there are ~2 grey "
                    "levels. efficientvit-sr-s-x2 Set5 ONNX QDQ PSNR-Y drop: all int8 0.154 dB, skip + tail "
                    "float 0.018 dB (int8 skip input +0.082, skip output +0.059, residual output +0.026, "
                    "sum +0.025 dB)")


def global_skip_modules(model: Any, example: Any) -> list[str]:
    """Names of the fixed interpolation modules (constant buffers, no parameters: e.g. a bicubic skip as a
    constant conv) that read the model's input image itself (its top-left h×w equals ``example``, so an
    edge-padded copy counts), found by running ``model`` once on ``example`` (float32 1×3×t×t tensor)."""
    import torch

    from ..lowering.rewrite import observe_inputs

    def fixed(name: str, m: Any) -> bool:
        return not any(True for _ in m.parameters()) and any(True for _ in m.buffers())

    h, w = example.shape[-2:]
    found: list[str] = []
    for name, args in observe_inputs(model, example, fixed).items():
        x = args[0] if args else None
        if (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[:2] == example.shape[:2]
                and x.shape[-2] >= h and x.shape[-1] >= w and torch.equal(x[..., :h, :w], example)
                and not any(name.startswith(f + ".") for f in found)):
            found.append(name)
    return found
