"""HART quality proxy: Fréchet distance over fixed features (no Inception weights here)."""

import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason="scikit-image (bundled photos as the real set) is not installed")

from edgevit.errors import EdgevitError, UnknownKeyError  # noqa: E402
from edgevit.hart.configs import get_config  # noqa: E402
from edgevit.hart.model import HartModel  # noqa: E402
from edgevit.hart.quality import EXTRACTORS, feature_distance, frechet_distance, random_cnn_features, sample_quality  # noqa: E402
from edgevit.hart.sampler import EagerPrograms, SamplerSettings  # noqa: E402
from edgevit.hart.train import photo_crops  # noqa: E402


def test_frechet_distance_properties():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 4))
    assert abs(frechet_distance(a, a)) < 1e-8
    shifted = frechet_distance(a, a + 3.0)
    assert abs(shifted - 4 * 9.0) < 1e-6  # |Δμ|² only, covariances equal
    with pytest.raises(EdgevitError, match="N >= 2"):
        frechet_distance(a[:1], a)


@pytest.mark.parametrize("extractor", EXTRACTORS.names())
def test_real_crops_are_closer_than_noise(extractor):
    torch.manual_seed(0)
    tok = HartModel(get_config("hart-tiny")).tokenizer.eval()
    train, _ = photo_crops(16, "train", per_class=8)
    held, _ = photo_crops(16, "heldout", per_class=8)
    noise = torch.rand(held.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    real = feature_distance(train, held, extractor, tok)
    assert 0 <= real < feature_distance(noise, held, extractor, tok)
    np.testing.assert_array_equal(random_cnn_features(held), random_cnn_features(held))  # fixed, seeded
    with pytest.raises(UnknownKeyError, match="did you mean"):
        feature_distance(train, held, "random_cnn")


def test_sample_quality_report():
    torch.manual_seed(0)
    model = HartModel(get_config("hart-tiny")).eval()
    r = sample_quality(EagerPrograms(model), model, SamplerSettings(cfg=1.5), per_class=2)
    assert r["images"] == 16 and r["feature_dims"] == 86 and r["distance"] > r["real_reference"] >= 0
