"""HART export: per-scale step programs (KV cache in/out), diffusion step, decoder; the artifact host loop
gives the eager sampler's tokens for the same seed; folder integrity; generate command."""

import json

import numpy as np
import pytest
import torch

from edgevit import processing
from edgevit.errors import EdgevitError
from edgevit.hart.artifacts import load_hart_artifacts
from edgevit.hart.checkpoint import save_folder
from edgevit.hart.configs import get_config
from edgevit.hart.export import export_hart, generate_one
from edgevit.hart.model import HartModel
from edgevit.hart.sampler import EagerPrograms, SamplerSettings
from edgevit.io import read_image
from edgevit.runtime.base import load_artifact

FORMATS = {"onnx": "onnx", "tflite": "ai_edge_litert", "pte": "executorch"}


def tiny_model() -> HartModel:
    """hart-tiny with its zero-initialised (AdaLN-zero) diffusion layers given weights, so the residual the
    diffusion programs produce is not trivially zero."""
    torch.manual_seed(0)
    model = HartModel(get_config("hart-tiny")).eval()
    with torch.no_grad():
        for name, p in model.diffusion.net.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_folder(tiny_model(), tmp_path_factory.mktemp("hart") / "tiny")


@pytest.fixture(scope="module", params=list(FORMATS))
def exported(request, checkpoint, tmp_path_factory):
    pytest.importorskip(FORMATS[request.param], reason=f"{FORMATS[request.param]} (the {request.param} toolchain) "
                                                       "is not installed")
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp(f"art-{request.param}") / "gen"
    top = export_hart(checkpoint, request.param, out, labels=[0, 5], progress=False)
    return request.param, out, top


def test_fp32_artifacts_reproduce_eager_tokens(exported, checkpoint):
    fmt, out, top = exported
    fid = top["fidelity"]
    assert fid["gate_result"] == "passed" and fid["token_agreement"] == 1.0 and fid["psnr_min_db"] >= 40
    assert top["batch"] == 2 and top["starts"] == [0, 1, 5, 21]
    if fmt == "pte":  # the qkv linears (constant bias buffers in ScaleStep) run in XNNPACK, not portable addmm
        report = json.loads((out / "step_3" / "manifest.json").read_text())["delegation"]
        assert report["delegated_nodes"] > 0 and not any("addmm" in op for op in report["non_delegated_ops"])
    comps = top["components"]
    assert sorted(comps) == ["decoder", "diffusion", "step_0", "step_1", "step_2", "step_3"]
    assert comps["step_3"]["inputs"][-1]["shape"] == [2, 2, 2, 2, 85, 16]  # depth, k/v, B, H, Lmax, d
    for name in comps:
        runner = load_artifact(out / name)
        assert runner.manifest.format == fmt and runner.manifest.precision == "fp32"
    arts = load_hart_artifacts(out)
    eager = EagerPrograms(tiny_model())
    a = generate_one(eager, eager.model, 3, 11, arts.settings)  # a class and seed the gate did not use
    b = generate_one(arts.programs, arts.model, 3, 11, arts.settings)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    assert float(a.residual.abs().mean()) > 1e-3  # the diffusion programs did real work
    torch.testing.assert_close(b.images, a.images, atol=1e-4, rtol=0)
    assert set(arts.programs.seconds) == set(comps)  # every program ran as an artifact, none eagerly


def test_unguided_generation_pads_rows(exported):
    _, out, _ = exported
    arts = load_hart_artifacts(out)
    eager = EagerPrograms(tiny_model())
    s = SamplerSettings(cfg=0.0)
    a, b = generate_one(eager, eager.model, 1, 2, s), generate_one(arts.programs, arts.model, 1, 2, s)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))


def test_kv_cache_overflow_and_unknown_offset(exported):
    fmt, out, _ = exported
    if fmt != "onnx":
        pytest.skip("the cache checks run on the host, format independent; run once (onnx)")
    p = load_hart_artifacts(out).programs
    x = torch.zeros(2, 64, 32)
    with pytest.raises(EdgevitError, match="KV cache overflow"):
        p.step(x, torch.zeros(2, 32), torch.zeros(2, 32), torch.zeros(2, 64, 16), torch.zeros(2, 64, 16),
               p.empty_cache(2), start=40)
    with pytest.raises(EdgevitError, match="no step program at cache offset 3"):
        p.step(x[:, :4], torch.zeros(2, 32), torch.zeros(2, 32), torch.zeros(2, 4, 16), torch.zeros(2, 4, 16),
               p.empty_cache(2), start=3)


def test_tampered_or_foreign_folders_fail(exported, tmp_path):
    import shutil

    fmt, out, _ = exported
    if fmt != "onnx":
        pytest.skip("folder checks are format independent; run once (onnx)")
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    art = bad / "step_1" / "model.onnx"
    data = bytearray(art.read_bytes())
    data[-10] ^= 0xFF
    art.write_bytes(bytes(data))
    with pytest.raises(EdgevitError, match="sha256"):
        load_hart_artifacts(bad)
    top = json.loads((out / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**top, "kind": "edgevit-sam-artifacts"}))
    with pytest.raises(EdgevitError, match="not a HART artifact folder"):
        load_hart_artifacts(bad)


def test_generate_command_matches_eager(exported, checkpoint, tmp_path, capsys):
    from edgevit.cli import main

    fmt, out, _ = exported
    if fmt != "onnx":
        pytest.skip("the command is format independent; run once (onnx)")
    assert main(["generate", "--artifacts", str(out), "--class", "2", "--seed", "7", "--count", "2",
                 "--out", str(tmp_path / "a")]) == 0
    assert main(["generate", "--model", str(checkpoint), "--class", "2", "--seed", "7", "--count", "2",
                 "--out", str(tmp_path / "e")]) == 0
    for name in ("class2_seed7.png", "class2_seed8.png"):
        a, e = read_image(tmp_path / "a" / name), read_image(tmp_path / "e" / name)
        assert a.shape == (16, 16, 3) and np.abs(a.astype(int) - e.astype(int)).max() <= 1
    capsys.readouterr()
    assert main(["generate", "--artifacts", str(out), "--class", "8", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "out of range" in err


def test_int8_keeps_tokens_and_falls_back_to_fp32_when_the_budget_fails(checkpoint, tmp_path, capsys):
    """One int8 export: its first measurement (diffusion + decoder int8) keeps the tokens and changes the image
    a little; a 90 dB budget (only fp32 meets it) then reverts both programs to fp32."""
    import re

    from edgevit.hart.export import GenGate

    pytest.importorskip("onnx", reason="onnx is not installed")
    torch.set_num_threads(1)
    top = export_hart(checkpoint, "onnx", tmp_path / "q", precision="int8", labels=[0], progress=True,
                      gate=GenGate(min_psnr_db=90.0))
    log = capsys.readouterr().out
    first = re.search(r"export-hart: tokens ([\d.]+)% equal, image PSNR >= ([\d.]+) dB", log)
    assert "lowering diffusion (onnx/int8)" in log and first, log
    assert float(first[1]) == 100.0  # the steps stay fp32 and nothing int8 feeds the sampling
    assert 15 < float(first[2]) < 90  # int8 changes the residual (not bit-exact) but stays close
    assert re.search(r"quality proxy [\d.]+x eager fp32's", log), log  # int8 gates also measure the proxy
    comps, fid = top["components"], top["fidelity"]
    assert comps["step_0"]["precision"] == "fp32" and fid["gate_result"] == "passed" and fid["psnr_min_db"] >= 90
    assert fid["quality_ratio"] == pytest.approx(1.0, abs=1e-6)  # both programs reverted to fp32
    for name in ("diffusion", "decoder"):
        assert comps[name]["precision"] == "fp32" and any("int8" in n for n in comps[name]["notes"])
    arts = load_hart_artifacts(tmp_path / "q")
    assert arts.programs.runners["decoder"].manifest.precision == "fp32"


def test_quality_ratio_is_one_for_eager_and_flags_a_drifted_decoder(checkpoint):
    """The int8 gate's quality proxy: 1.0 for the eager programs themselves, well above the 1.05 budget for
    programs whose decoder output drifts (a colour cast of 0.3 on the [-1, 1] range)."""
    from edgevit.hart.checkpoint import load_folder
    from edgevit.hart.export import GenFidelity, GenGate, quality_ratio

    model = load_folder(checkpoint).eval()
    s = SamplerSettings(cfg=1.5)

    class Drifted(EagerPrograms):
        def __init__(self, m):
            super().__init__(m)
            decode = self.decode
            self.decode = lambda latent: (decode(latent) + torch.tensor([0.3, 0.0, -0.3])[:, None, None]).clamp(-1, 1)

    assert quality_ratio(EagerPrograms(model), EagerPrograms(model), model, s, [0, 5]) == pytest.approx(1.0)
    bad = quality_ratio(EagerPrograms(model), Drifted(model), model, s, [0, 5])
    assert bad > 1.05
    failures = GenGate().failures(GenFidelity(16, 1.0, 60.0, 0.01, bad))
    assert len(failures) == 1 and "quality proxy" in failures[0]


def test_guidance_distilled_model_exports_one_row_per_image(tmp_path):
    """A model with guidance distilled in exports batch-1 step programs and samples them with its own scale."""
    from dataclasses import replace

    from edgevit.hart.generate import generate_images

    pytest.importorskip("onnx", reason="onnx is not installed")
    torch.set_num_threads(1)
    model = tiny_model()
    model.cfg = replace(model.cfg, guidance_distilled=1.5)
    ckpt = save_folder(model, tmp_path / "g")
    top = export_hart(ckpt, "onnx", tmp_path / "art", labels=[1])
    arts = load_hart_artifacts(tmp_path / "art")
    assert top["fidelity"]["token_agreement"] == 1.0 and arts.programs.batch == 1
    assert arts.programs.guidance_distilled == 1.5
    paths = generate_images(tmp_path / "png", 1, artifacts=tmp_path / "art", cfg=1.5)
    eager = generate_one(EagerPrograms(model), model, 1, 0, SamplerSettings(cfg=1.5))
    assert np.abs(read_image(paths[0]).astype(int)
                  - processing.signed_to_image(eager.images[0].numpy()).astype(int)).max() <= 1
    with pytest.raises(EdgevitError, match="distilled into its weights"):
        generate_images(tmp_path / "png", 1, artifacts=tmp_path / "art", cfg=3.0)
