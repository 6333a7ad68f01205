"""HART training loop: data split, resumability (a resumed run equals an uninterrupted one)."""

import pytest
import torch

pytest.importorskip("skimage", reason="scikit-image (bundled photos) is not installed")

from edgevit.hart.checkpoint import load_folder  # noqa: E402
from edgevit.hart.train import PHOTOS, photo_crops, tokenizer_report, train_teacher, train_tokenizer  # noqa: E402


def test_photo_crops_split_and_range():
    x, y = photo_crops(16, "train", per_class=2)
    h, _ = photo_crops(16, "heldout", per_class=2)
    assert x.shape == (2 * len(PHOTOS), 3, 16, 16) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1 and sorted(set(y.tolist())) == list(range(len(PHOTOS)))
    assert not any(torch.equal(a, b) for a in x for b in h)


def test_resumed_training_equals_uninterrupted(tmp_path):
    kw = dict(batch=4, per_class=2, ckpt_every=1, log_every=1)
    tok = train_tokenizer("hart-tiny", tmp_path / "tok", steps=3, **kw)
    train_tokenizer("hart-tiny", tmp_path / "tok2", steps=1, **kw)
    train_tokenizer("hart-tiny", tmp_path / "tok2", steps=3, **kw)  # resumes at step 1
    for k, v in torch.load(tok, weights_only=True).items():
        torch.testing.assert_close(v, torch.load(tmp_path / "tok2" / "tokenizer.pt", weights_only=True)[k], rtol=0, atol=0)
    train_teacher("hart-tiny", tok, tmp_path / "a", steps=4, **kw)
    train_teacher("hart-tiny", tok, tmp_path / "b", steps=2, **kw)
    train_teacher("hart-tiny", tok, tmp_path / "b", steps=4, **kw)  # resumes at step 2
    a, b = load_folder(tmp_path / "a" / "hart"), load_folder(tmp_path / "b" / "hart")
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    report = tokenizer_report("hart-tiny", tmp_path / "tok", per_class=1)
    assert report["images"] == len(PHOTOS) and 0 < report["codebook_used"] <= report["vocab_size"]
    assert abs(report["psnr_discrete_plus_residual"] - report["psnr_continuous"]) < 1e-3
    first = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["history"]
    assert len(first) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in first)
