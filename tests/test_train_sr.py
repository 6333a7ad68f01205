"""train-sr on tiny crops of a few photos: it learns, it is deterministic, it resumes exactly, and bad
arguments are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import edgevit
from edgevit.cli import main
from edgevit.errors import EdgevitError
from edgevit.sr.data import dihedral, prepare_pairs, random_pair
from edgevit.train import train_sr as tsr

FAST = dict(steps=4, batch_size=2, patch=8, warmup=1, checkpoint_every=2, log_every=1, progress=False)


@pytest.fixture
def photos(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        small = rng.integers(0, 256, (8, 10, 3)).astype(np.uint8)
        big = np.asarray(Image.fromarray(small).resize((50 + 7 * i, 40), Image.BICUBIC))
        Image.fromarray(big).save(folder / f"p{i}.png")
    return folder


def _run(photos, out, model="fsrcnn-x2", scale=2, **kw):
    return tsr.train_sr(model, scale, str(photos), out, **(FAST | kw))


def test_training_pairs_follow_the_benchmark_downscale(photos):
    from edgevit.sr.data import load_training_images

    pairs = prepare_pairs(load_training_images(str(photos)), 2, 16)
    hr, lr = pairs[1]
    assert hr.shape == (40, 56, 3) and lr.shape == (20, 28, 3)  # mod-cropped 57 -> 56
    x, y = random_pair(hr, lr, np.random.default_rng(0), 2, 8)
    assert x.shape == (3, 8, 8) and y.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1
    for k in range(8):  # flips/rotations commute with the MATLAB downscale (up to the uint8 rounding)
        t = np.ascontiguousarray(dihedral(hr, k))
        down = edgevit.processing.resize_matlab(t, (t.shape[0] // 2, t.shape[1] // 2)).astype(int)
        assert np.abs(down - dihedral(lr, k)).max() <= 1


def test_learns_and_writes_outputs(photos, tmp_path):
    report = _run(photos, tmp_path / "a", steps=16, lr=5e-3, log_every=4, checkpoint_every=16)
    curve = [c["loss"] for c in report["loss_curve"]]
    assert curve[-1] < curve[0]
    weights = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert set(weights) == set(edgevit.create_model("fsrcnn-x2").state_dict())
    assert report["command"].startswith("edgevit train-sr --model fsrcnn-x2 --scale 2")
    edgevit.create_model("fsrcnn-x2", weights=tmp_path / "a" / "model.safetensors")


def test_resume_continues_exactly(photos, tmp_path, monkeypatch):
    full = _run(photos, tmp_path / "full", model="efficientvit-sr-s-x2")

    class Interrupt(Exception):
        pass

    real_save = tsr.save_checkpoint

    def save_then_crash(path, state):
        real_save(path, state)
        raise Interrupt

    monkeypatch.setattr(tsr, "save_checkpoint", save_then_crash)
    with pytest.raises(Interrupt):
        _run(photos, tmp_path / "cut", model="efficientvit-sr-s-x2")
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(tsr, "save_checkpoint", real_save)
    resumed = _run(photos, tmp_path / "cut", model="efficientvit-sr-s-x2", resume=True)
    assert resumed["resumed_at_steps"] == [2] and resumed["loss_curve"] == full["loss_curve"]
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(EdgevitError, match="other arguments"):
        _run(photos, tmp_path / "cut", model="efficientvit-sr-s-x2", resume=True, lr=1e-2)
    with pytest.raises(EdgevitError, match="already holds a training run"):
        _run(photos, tmp_path / "cut", model="efficientvit-sr-s-x2")


def test_bad_arguments_are_one_line_errors(photos, tmp_path, capsys):
    with pytest.raises(EdgevitError, match="upscales x2, not x4"):
        _run(photos, tmp_path / "x", scale=4)
    with pytest.raises(EdgevitError, match="not super-resolution"):
        _run(photos, tmp_path / "x", model="efficientvit-seg-b0-voc")
    with pytest.raises(EdgevitError, match="no training image"):
        _run(photos, tmp_path / "x", patch=64)
    assert main(["train-sr", "--model", "fsrcnn-x2", "--scale", "2", "--data", str(tmp_path / "none"),
                 "--out", str(tmp_path / "y"), "--steps", "1", "--warmup", "0"]) == 2
    err = capsys.readouterr().err
    assert "not a folder of images" in err and err.count("\n") == 1
