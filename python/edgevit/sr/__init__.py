"""Super-resolution: tiled inference, evaluation with the field's conventions (PSNR/SSIM on Y), data."""

from .evaluate import SREvaluation, eval_sr, evaluate_sr, psnr, ssim
from .tiling import upscale_tiled

__all__ = ["SREvaluation", "eval_sr", "evaluate_sr", "psnr", "ssim", "upscale_tiled"]
