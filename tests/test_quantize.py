"""Fidelity metrics, the gate, int8 emulation and per-layer sensitivity on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgevit
from edgevit import processing
from edgevit.export import artifact_contract
from edgevit.fidelity import Fidelity, Gate, cosine, measure, sqnr_db
from edgevit.lowering.rewrite import export_friendly
from edgevit.quantize.calibration import load_image_set
from edgevit.quantize.sensitivity import (
    emulate_int8, fake_quant_activation, fake_quant_weight, layer_sensitivity, quant_units,
)
from edgevit.runtime import TorchRunner


def test_sqnr_and_cosine_known_values():
    ref = np.array([3.0, 4.0])
    assert sqnr_db(ref, ref) == float("inf")
    # signal 25, noise 0.25 -> 20 dB
    assert sqnr_db(ref, ref + np.array([0.5, 0.0])) == pytest.approx(20.0)
    assert cosine(ref, 2 * ref) == pytest.approx(1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(0.0)


def test_gate_criteria():
    gate = Gate(max_miou_drop=1.0, min_agreement=0.98)
    ok = Fidelity(3, 0.99, 0.95, 30.0, 0.999, 0.5, 0.495, 0.5)
    assert gate.failures(ok) == []
    bad = Fidelity(3, 0.97, 0.9, 20.0, 0.99, 0.5, 0.48, 2.0)
    assert gate.failures(bad) == ["pixel agreement 97.00% < 98%", "mIoU drop 2.00 points > 1.0"]
    unlabelled = Fidelity(3, 0.99, 0.9, 30.0, 0.99)
    assert gate.failures(unlabelled) == []


def test_fake_quant_weight_is_per_channel_int8():
    w = torch.randn(4, 3, 3, 3) * torch.tensor([1.0, 10.0, 0.01, 100.0]).view(4, 1, 1, 1)
    q = fake_quant_weight(w)
    for c in range(4):
        scale = w[c].abs().max() / 127
        levels = torch.round(q[c] / scale)
        assert torch.allclose(levels, q[c] / scale, atol=1e-3) and levels.abs().max() <= 127
        assert (q[c] - w[c]).abs().max() <= scale / 2 + 1e-6


def test_fake_quant_activation_grid_and_zero():
    x = torch.linspace(-1.0, 3.0, 1001)
    q = fake_quant_activation(x, -1.0, 3.0)
    scale = 4.0 / 255
    assert (q - x).abs().max() <= scale / 2 + 1e-6
    assert len(torch.unique(q)) <= 256
    assert fake_quant_activation(torch.zeros(1), 0.5, 3.0).item() == 0.0  # zero stays exact


@pytest.fixture(scope="module")
def voc_inputs(shared_data):
    images = load_image_set(shared_data / "seg" / "voc2012_val14", "voc", num_classes=21)
    xs = [processing.image_to_input(im, processing.FixedSize(128, 128), processing.IMAGENET_MEAN,
                                    processing.IMAGENET_STD) for im in images.images]
    return images, xs


def test_sensitivity_flags_a_layer_made_hard_to_quantize(voc_inputs):
    _, xs = voc_inputs
    torch.manual_seed(0)
    model = edgevit.create_model("efficientvit-seg-b0-voc")
    friendly, _ = export_friendly(model, torch.from_numpy(xs[0]))
    units = quant_units(friendly)
    victim = "backbone.stages.1.op_list.1.main"
    assert victim in units and "backbone.stages.2.op_list.1.context_module.main" in units
    before = {r.name: r.sqnr_db for r in layer_sensitivity(friendly, xs[:6], xs[6:8], [units[0], victim], False)}
    with torch.no_grad():  # one outlier weight per output channel makes per-channel int8 coarse for the rest
        for m in friendly.get_submodule(victim).modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.view(m.weight.shape[0], -1)[:, 0] = 100 * m.weight.abs().max()
    after = {r.name: r.sqnr_db for r in layer_sensitivity(friendly, xs[:6], xs[6:8], [units[0], victim], False)}
    assert after[victim] < before[victim] - 10, (before, after)
    assert after[victim] < after[units[0]]
    assert all(np.isfinite(v) for v in after.values())


def test_emulated_int8_skip_improves_fidelity(voc_inputs):
    _, xs = voc_inputs
    torch.manual_seed(0)
    model = edgevit.create_model("efficientvit-seg-b0-voc")
    friendly, _ = export_friendly(model, torch.from_numpy(xs[0]))
    units = quant_units(friendly)
    with torch.no_grad():
        ref = friendly(torch.from_numpy(xs[9])).numpy()
        all_q = emulate_int8(friendly, xs[:6])(torch.from_numpy(xs[9])).numpy()
        none_q = emulate_int8(friendly, xs[:6], skip=units)(torch.from_numpy(xs[9])).numpy()
    assert np.array_equal(none_q, ref)
    assert 10 < sqnr_db(ref, all_q) < 80


def test_measure_on_real_images_with_labels(voc_inputs):
    images, _ = voc_inputs
    torch.manual_seed(0)
    model = edgevit.create_model("efficientvit-seg-b0-voc")
    contract = artifact_contract(model.contract, (128, 128))
    small = images.split(3)[0]
    same = measure(TorchRunner(model), TorchRunner(model), contract, small)
    assert same.agreement == 1.0 and same.miou_drop == 0.0 and same.sqnr_db == float("inf")
    noisy = measure(TorchRunner(model), lambda x: model(torch.from_numpy(x)).detach().numpy() + 0.5, contract, small)
    assert noisy.agreement == 1.0 and noisy.sqnr_db < 60  # constant shift: same argmax, lower SQNR
    flipped = measure(TorchRunner(model), lambda x: -model(torch.from_numpy(x)).detach().numpy(), contract, small)
    assert flipped.agreement < 0.5 and flipped.cosine < 0


def test_unlabelled_image_set_skips_annotation_folders(shared_data):
    voc = shared_data / "seg" / "voc2012_val14"
    images = load_image_set(voc)  # images/ and labels/ under the root: only the photos calibrate
    assert len(images) == 14 and images.labels is None
    assert all(name.startswith("images/") for name in images.names)
    assert all(im.ndim == 3 and im.shape[2] == 3 for im in images.images)


def test_units_of_a_plain_conv_model_are_its_convolutions():
    """Super-resolution nets use none of the segmentation block types: their convs are the units."""
    from edgevit.quantize.sensitivity import quant_units

    model = edgevit.create_model("fsrcnn-x2")
    convs = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    units = quant_units(model)
    assert units and set(units) <= set(convs)
