"""Fine-tuning on real VOC photos with tiny crops: learning, determinism, exact resume, held-out images
never trained on, outputs that load back, and one-line errors for bad arguments."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import edgevit
from edgevit.errors import EdgevitError
from edgevit.train import finetune as ft

MODEL = "efficientvit-seg-b0-voc"
# Tiny runs: 3 images (the last held out), 64-pixel crops, a few steps.
FAST = dict(steps=4, batch_size=2, crop=64, warmup=1, holdout=1, limit=3, checkpoint_every=2, log_every=1,
            progress=False)


@pytest.fixture
def voc(shared_data):
    root = shared_data / "seg" / "voc2012_val14"
    if not root.is_dir():
        pytest.skip(f"{root} not in the shared data pack")
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """Train single-threaded, like finetune's default (fast and reproducible on a shared machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def no_eval(monkeypatch):
    """Skip the (slow, full-resolution) final evaluation; record what it would have measured."""
    calls = []

    def fake(model, dataset, indices, what, progress):
        calls.append((what, list(indices)))
        return None

    monkeypatch.setattr(ft, "_evaluate", fake)
    return calls


def _run(voc, out, **kw):
    return ft.finetune(MODEL, voc, "voc", out, **{**FAST, **kw})


def _weights(path):
    return load_file(str(path))


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_loss_goes_down_on_a_fixed_batch(voc):
    ds = edgevit.open_segmentation_dataset(voc, "voc", limit=2)
    samples = {i: ds[i] for i in range(2)}
    torch.manual_seed(0)
    model = edgevit.create_model(MODEL).train()
    x, y = ft.make_batch(samples, [0, 1], np.random.default_rng(0), 64, (0.5, 2.0), model.contract)
    assert x.shape == (2, 3, 64, 64) and y.shape == (2, 64, 64) and set(y.unique().tolist()) <= {*range(21), 255}
    opt = ft.make_optimizer(model, 3e-3, 0.01)
    losses = []
    for _ in range(10):
        loss = ft.segmentation_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_outputs_load_back_and_report_train_and_holdout(voc, tmp_path):
    out = tmp_path / "run"
    report = _run(voc, out, steps=2, save_dtype="float16")
    names = [p.name for p in edgevit.open_segmentation_dataset(voc, "voc", limit=3).pairs]
    assert report["data"]["train"] == names[:2] and report["data"]["holdout"] == names[2:]
    on_disk = json.loads((out / "train.json").read_text())
    assert on_disk["final_loss"] == report["final_loss"] and len(on_disk["loss_curve"]) == 2
    for part in ("train", "holdout"):
        for metrics in (on_disk["eval"][part], on_disk["eval_float32_in_memory"][part]):
            assert 0 <= metrics["miou"] <= 1 and 0 <= metrics["pixel_accuracy"] <= 1
    weights = _weights(out / "model.safetensors")
    assert all(v.dtype == torch.float16 for k, v in weights.items() if not k.endswith("num_batches_tracked"))
    model = edgevit.create_model(MODEL, weights=out / "model.safetensors")  # strict load
    assert next(model.parameters()).dtype == torch.float32
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 2 and state["config"] == report["args"]
    # The recorded command maps 1:1 onto finetune's parameters.
    parser = ft.argparse.ArgumentParser()
    ft.add_arguments(parser)
    args = vars(parser.parse_args(shlex.split(report["command"])[3:]))
    args["scale"] = tuple(args["scale"])
    del args["resume"], args["progress"]
    assert ft._validated_config(**args).to_dict() == report["args"]


def test_same_seed_gives_identical_weights(voc, tmp_path, no_eval):
    a, b, c = (tmp_path / n for n in "abc")
    _run(voc, a, seed=3)
    _run(voc, b, seed=3)
    _run(voc, c, seed=4)
    _assert_same(_weights(a / "model.safetensors"), _weights(b / "model.safetensors"))
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()  # byte-identical file
    wa, wc = _weights(a / "model.safetensors"), _weights(c / "model.safetensors")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_continues_exactly(voc, tmp_path, monkeypatch, no_eval):
    full = _run(voc, tmp_path / "full")

    class Interrupt(Exception):
        pass

    real_save = ft.save_checkpoint

    def save_then_crash(path, state):
        real_save(path, state)
        raise Interrupt  # the process dies right after the first checkpoint (step 2 of 4)

    monkeypatch.setattr(ft, "save_checkpoint", save_then_crash)
    with pytest.raises(Interrupt):
        _run(voc, tmp_path / "cut")
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 2
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    monkeypatch.setattr(ft, "save_checkpoint", real_save)
    resumed = _run(voc, tmp_path / "cut", resume=True)
    assert resumed["resumed_at_steps"] == [2]
    assert resumed["loss_curve"] == full["loss_curve"]
    _assert_same(_weights(tmp_path / "full" / "model.safetensors"), _weights(tmp_path / "cut" / "model.safetensors"))
    full_state = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    cut_state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for key in ("exp_avg", "exp_avg_sq"):
        for i, s in full_state["optimizer"]["state"].items():
            assert torch.equal(s[key], cut_state["optimizer"]["state"][i][key])


def test_holdout_images_never_enter_training(voc, tmp_path, monkeypatch, no_eval):
    reads = []
    real_open = ft.open_segmentation_dataset

    class Recording:
        def __init__(self, ds):
            self.ds, self.pairs = ds, ds.pairs
            self.labelset, self.num_classes, self.root = ds.labelset, ds.num_classes, ds.root

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            reads.append(i)
            return self.ds[i]

    monkeypatch.setattr(ft, "open_segmentation_dataset", lambda *a, **k: Recording(real_open(*a, **k)))
    report = _run(voc, tmp_path / "run", steps=6, limit=4, holdout=2)
    assert set(reads) == {0, 1}  # both training images used, held-out ones never read during training
    assert no_eval == [("train", [0, 1]), ("holdout", [2, 3])]
    names = [p.name for p in real_open(voc, "voc", limit=4).pairs]
    assert report["data"]["holdout"] == names[2:]
    # The sampler alone: only training indices, every one of them each epoch.
    train = [0, 1, 2, 3, 4]
    drawn = [ft.batch_indices(train, s, 3, seed=7) for s in range(50)]
    flat = [i for batch in drawn for i in batch]
    assert set(flat) == set(train)
    assert all(sorted(flat[e * 5 : e * 5 + 5]) == train for e in range(30))
    assert drawn == [ft.batch_indices(train, s, 3, seed=7) for s in range(50)]


def test_split_holdout_takes_the_last_images():
    assert ft.split_holdout(5, 2) == ([0, 1, 2], [3, 4])
    assert ft.split_holdout(5, 0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(EdgevitError, match="holdout"):
        ft.split_holdout(3, 3)


def test_resize_nearest_copies_values():
    label = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert ft.resize_nearest(label, (2, 2)).tolist() == [[5, 7], [13, 15]]
    up = ft.resize_nearest(label[:2, :2], (4, 4))
    assert up.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [4, 4, 5, 5], [4, 4, 5, 5]]
    odd = ft.resize_nearest(label, (3, 7))
    assert odd.shape == (3, 7) and set(odd.ravel()) <= set(label.ravel())


def test_augment_keeps_image_and_label_aligned():
    # Four 50x60 blocks, each with its own colour and class; the image colour says the label.
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
    classes = np.array([3, 7, 11, 15], np.uint8)
    block = np.kron(np.arange(4).reshape(2, 2), np.ones((50, 60), int))
    image, label = colours[block], classes[block]
    mean, std = np.array(edgevit.processing.IMAGENET_MEAN), np.array(edgevit.processing.IMAGENET_STD)
    for seed in range(20):
        x, y = ft.augment(image, label, np.random.default_rng(seed), 64, (0.5, 2.0), jitter=0.0)
        assert x.shape == (3, 64, 64) and x.dtype == np.float32 and y.shape == (64, 64) and y.dtype == np.uint8
        assert set(np.unique(y)) <= {3, 7, 11, 15, 255}
        rgb = (x.transpose(1, 2, 0) * std + mean) * 255
        for k, c in enumerate(classes):
            inside = y == c
            if inside.sum() > 40:  # the block's dominant colour is its own (bicubic blurs only edges)
                assert np.abs(np.median(rgb[inside], axis=0) - colours[k]).max() < 8, (seed, c)
        assert np.all(x[:, y == 255] == 0) or (y == 255).sum() == 0  # padding only, no ignore in the source


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(crop=100), "multiple of 32"),
    (dict(steps=0), "steps"),
    (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(warmup=10, steps=5), "warmup"),
    (dict(holdout=3), "holdout"),
    (dict(scale=(2.0, 1.0)), "scale"),
    (dict(batch_size=0), "batch_size"),
    (dict(save_dtype="int8"), "save_dtype"),
    (dict(resume=True), "no checkpoint to resume"),
    (dict(labelset="cityscapes"), "classes"),
])
def test_bad_arguments_raise_one_line_errors(voc, tmp_path, kwargs, message):
    out = tmp_path / "run"
    with pytest.raises(EdgevitError, match=message) as err:
        _run(voc, out, **kwargs)
    assert "\n" not in str(err.value)
    assert not (out / "model.safetensors").exists() and not (out / "last.pt").exists()


def test_existing_run_is_not_overwritten_and_resume_needs_same_args(voc, tmp_path, no_eval):
    out = tmp_path / "run"
    _run(voc, out, steps=2)
    with pytest.raises(EdgevitError, match="already holds"):
        _run(voc, out, steps=2)
    with pytest.raises(EdgevitError, match=r"steps: 2 -> 3"):
        _run(voc, out, steps=3, resume=True)
    with pytest.raises(EdgevitError, match="dataset root does not exist"):
        ft.finetune(MODEL, tmp_path / "missing", "voc", tmp_path / "other", **FAST)
