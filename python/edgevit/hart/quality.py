"""A quality proxy for generated images without an Inception network: Fréchet distance between Gaussian
fits of features of generated and held-out real crops.

Why not FID: no wheel in requirements/lock.txt ships pretrained image-feature weights (torchvision is not
installed; ``transformers`` ships architectures without weights; opencv-python-headless ships no DNN models; no
file over 5 MB in site-packages is a network), and nothing may be downloaded, so this proxy uses feature
extractors that are fully defined here:

* ``random-cnn`` (default): a fixed, seeded random convolutional net (3 conv + ReLU stages, He-normal
  weights from ``torch.Generator().manual_seed(0)``, channels 8/16/16), features = per-stage channel means
  and standard deviations over space (86 dims). Random conv features capture colour, edge and texture
  statistics at growing receptive fields; they are deterministic across runs and independent of every
  trained model (so teacher, student and baseline are judged by the same fixed yardstick).
* ``thumbnail``: the simplest second proxy, the image average-pooled to 4×4 RGB (48 dims): colour and
  coarse layout only, no learned or random weights at all, so nothing about it can flatter one model.
* ``tokenizer``: channel means and standard deviations of the (frozen, shared) tokenizer encoder's
  continuous latent. Tuned to what the tokenizer reconstructs, it is blind to what it cannot represent.

Limits: not perceptually calibrated like Inception FID, so values are only comparable with each other (same
extractor, same real set, same number of images); with few images the covariance estimate biases the
distance upward, so compare at equal counts and use well over D images (D = 86 for
random-cnn, 2·Cz for tokenizer); it measures distribution match, not per-image fidelity.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import EdgevitError
from ..registry import Registry

RANDOM_CNN_SEED = 0
_CHANNELS = (8, 16, 16)  # small on purpose: 86 feature dims, so a few hundred images fit a covariance


def _random_cnn_weights() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(RANDOM_CNN_SEED)
    weights, cin = [], 3
    for cout in _CHANNELS:
        weights.append(torch.randn((cout, cin, 3, 3), generator=gen) * (2.0 / (9 * cin)) ** 0.5)
        cin = cout
    return weights


@torch.no_grad()
def random_cnn_features(images: torch.Tensor) -> np.ndarray:
    """images N×3×H×W in [-1, 1] -> N×(2·(3 + sum channels)) float64: per-stage channel mean and std
    (stage 0 = the pixels; each conv stage is conv3×3 stride 2 + ReLU)."""
    h, feats = images.float(), []
    for i, w in enumerate([None, *_random_cnn_weights()]):
        if w is not None:
            h = F.relu(F.conv2d(h, w, stride=2, padding=1))
        feats += [h.mean((2, 3)), h.std((2, 3))]
    return torch.cat(feats, 1).double().numpy()


@torch.no_grad()
def thumbnail_features(images: torch.Tensor) -> np.ndarray:
    """images N×3×H×W in [-1, 1] (H, W multiples of 4) -> N×48 float64: 4×4 average-pooled RGB."""
    return F.adaptive_avg_pool2d(images.float(), 4).flatten(1).double().numpy()


def tokenizer_features(tokenizer: torch.nn.Module) -> Callable[[torch.Tensor], np.ndarray]:
    """Features from a HART tokenizer's encoder: channel means and stds of its continuous latent (N×2Cz)."""
    @torch.no_grad()
    def feats(images: torch.Tensor) -> np.ndarray:
        z = tokenizer.encode(images.float())
        return torch.cat([z.mean((2, 3)), z.std((2, 3))], 1).double().numpy()
    return feats


EXTRACTORS: Registry[str] = Registry("feature extractor")
EXTRACTORS.add("random-cnn", "a fixed seeded random CNN (model independent)")
EXTRACTORS.add("thumbnail", "4x4 average-pooled RGB (no weights)")
EXTRACTORS.add("tokenizer", "the shared tokenizer's encoder latent statistics")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of feature sets a (N×D) and b (M×D):
    |μa − μb|² + tr(Σa + Σb − 2 (Σa Σb)^½); tr((Σa Σb)^½) = Σ sqrt(eig(Σa Σb)) (real, clipped at 0)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise EdgevitError(f"frechet_distance: need two feature sets N×D with N >= 2, got {a.shape} and {b.shape}")
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(sa @ sb)
    covmean = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * covmean)


def extractor_fn(extractor: str = "random-cnn", tokenizer: torch.nn.Module | None = None
                 ) -> Callable[[torch.Tensor], np.ndarray]:
    """The feature function of a registered ``extractor`` (images N×3×H×W in [-1, 1] -> N×D float64)."""
    EXTRACTORS.get(extractor)
    if extractor == "tokenizer":
        if tokenizer is None:
            raise EdgevitError("feature extractor 'tokenizer' needs the tokenizer module")
        return tokenizer_features(tokenizer)
    return thumbnail_features if extractor == "thumbnail" else random_cnn_features


def feature_distance(generated: torch.Tensor, real: torch.Tensor, extractor: str = "random-cnn",
                     tokenizer: torch.nn.Module | None = None) -> float:
    """Fréchet distance of ``generated`` vs ``real`` images (both N×3×H×W in [-1, 1]) under ``extractor``."""
    fn = extractor_fn(extractor, tokenizer)
    return frechet_distance(fn(generated), fn(real))


def sample_quality(programs, host: torch.nn.Module, settings, per_class: int = 8, seed: int = 0,
                   extractor: str = "random-cnn") -> dict[str, float | int | str]:
    """Generate ``per_class`` images of every class with ``programs`` (seeds ``seed`` .. ``seed + per_class - 1``,
    host pieces from the HartModel ``host``) and compare them with as many held-out real crops per class
    (:func:`edgevit.hart.train.photo_crops`, split "heldout"). Returns the distance and the real-vs-real
    reference (train crops vs held-out crops, same count). The held-out crops all come from one column strip per
photo, so they are less varied than the train crops the models learned: the reference is a scale, not a floor."""
    from .export import generate_one
    from .train import photo_crops

    cfg = host.cfg
    gen = torch.cat([generate_one(programs, host, label, seed + k, settings).images
                     for label in range(cfg.transformer.num_classes) for k in range(per_class)])
    real, _ = photo_crops(cfg.image_size, "heldout", per_class, seed)
    train, _ = photo_crops(cfg.image_size, "train", per_class, seed)
    tok = host.tokenizer if extractor == "tokenizer" else None
    dims = int(extractor_fn(extractor, tok)(real[:2]).shape[1])
    return {"extractor": extractor, "images": len(gen), "feature_dims": dims,
            "distance": feature_distance(gen, real, extractor, tok), "real_reference": feature_distance(train, real, extractor, tok)}
