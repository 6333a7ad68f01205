"""SAM export: two artifacts tied by one manifest, equal to eager, gated in mask terms, loadable by Predictor.

A random-weight EfficientViT-SAM with a tiny backbone at a 256 input (the real SAM neck width, prompt
encoder and mask decoder; the contract's 64×64 embedding). One fp32 folder per format (.pte, .tflite), exported
once per module; ONNX runs the int8 export and the gate failure (its fp32 masks must equal float's: 100.00).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgevit import io, load_artifact, processing
from edgevit.cli import main
from edgevit.errors import EdgevitError
from edgevit.export import GateError
from edgevit.fidelity import sqnr_db
from edgevit.models.efficientvit_sam import SamContract, build
from edgevit.sam import Predictor
from edgevit.sam.evaluate import open_sam_dataset
from edgevit.sam.export import export_sam, load_sam_artifacts
from edgevit.sam.fidelity import MaskGate, mask_iou

try:  # the backbone config moved to models.layers; accept both layouts
    from edgevit.models.layers import LargeBackboneCfg as BackboneCfg
except ImportError:  # pragma: no cover
    from edgevit.models.efficientvit_sam import SamBackboneCfg as BackboneCfg

GRABCUT = "sam/grabcut50"
SA_EXAMPLES = "sam/sa_examples"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build(BackboneCfg((8, 16, 16, 32, 32), (0, 0, 0, 1, 1)), (("stage4", "stage3", "stage2"), (32, 32, 16)),
                  1, 1).eval()
    model.contract = SamContract(256)
    model.model_id = "tiny-sam-test"
    return model


FORMATS = ("pte", "tflite")


@pytest.fixture(scope="module")
def exported(tiny, shared_data, tmp_path_factory):
    """fp32 folder per format, exported once per module on first use: ``exported(fmt) -> (folder, top)``."""
    folders: dict[str, tuple] = {}

    def get(fmt: str):
        if fmt not in folders:
            out = tmp_path_factory.mktemp(f"sam_{fmt}") / "sam"
            folders[fmt] = out, export_sam(tiny, fmt, "fp32", out, eval_data=shared_data / GRABCUT, eval_limit=1,
                                           threads=1, progress=False)
        return folders[fmt]

    return get


@pytest.fixture(scope="module")
def pte_folder(exported):
    return exported("pte")


def _real_inputs(tiny, shared_data):
    inst = open_sam_dataset(shared_data / GRABCUT, limit=1)[0]
    p = Predictor(tiny)
    image = io.read_image(inst.image)
    p.set_image(image)
    x = torch.from_numpy(processing.sam_image_to_input(image, 256, tiny.contract.mean, tiny.contract.std)[0])
    return inst, image, x, (p.embeddings, *p.prompt_arrays(points=[inst.first_click], labels=[1]))


def test_rewrites_are_exact_on_a_real_image(pte_folder):
    """The export records each rewrite with the max abs difference of the whole output, measured on a real image."""
    out, _ = pte_folder
    enc = json.loads((out / "encoder" / "manifest.json").read_text())["substitutions"]
    dec = json.loads((out / "decoder" / "manifest.json").read_text())["substitutions"]
    assert any("LiteMLA" in s["original"] for s in enc) and any("bicubic" in s["original"] for s in enc), enc
    assert enc[0]["max_abs_diff"] < 1e-4  # embeddings are LayerNorm outputs of O(1)
    assert sum("bmm" in s["replacement"] for s in dec) == 7  # every attention of the two-way transformer
    assert dec[0]["max_abs_diff"] < 1e-3  # mask logits of O(10)


def test_folder_layout_and_top_manifest_tie_the_components(pte_folder):
    out, top = pte_folder
    saved = json.loads((out / "manifest.json").read_text())
    assert saved == json.loads(json.dumps(top))
    assert saved["task"] == "promptable-segmentation" and saved["model_id"] == "tiny-sam-test"
    enc, ctx, dec = (saved["components"][k] for k in ("encoder", "context", "decoder"))
    assert enc["artifact"] == "encoder/model.pte" and dec["artifact"] == "decoder/model.pte"
    assert ctx["artifact"] == "context/model.pte" and ctx["precision"] == "fp32"
    assert [i["shape"] for i in enc["inputs"]] == [[1, 3, 256, 256]]
    assert [i["shape"] for i in ctx["inputs"]] == [[1, 256, 64, 64]]
    assert [o["shape"] for o in ctx["outputs"]] == [[1, 4096, 384]]
    assert [i["shape"] for i in dec["inputs"]] == [[1, 256, 64, 64], [1, 4096, 384], [1, 16, 2], [1, 16],
                                                   [1, 1, 256, 256], [1]]
    assert [o["shape"] for o in dec["outputs"]] == [[1, 4, 256, 256], [1, 4]]
    for comp in (enc, ctx, dec):
        m = json.loads((out / comp["path"] / "manifest.json").read_text())
        assert m["sha256"] == comp["sha256"] and m["precision"] == "fp32"
    assert saved["fidelity"]["gate_result"] == "passed" and saved["fidelity"]["mask_miou_vs_float"] > 99
    assert "16 prompt slots" in saved["contract"]["prompt_slots"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def _run_decoder(dec, ctx, dec_in, tiny) -> dict[str, np.ndarray]:
    """The context then the decoder artifact on the eager decoder's inputs ``dec_in``."""
    image_context = ctx.run({"embeddings": dec_in[0]})["image_context"]
    names = [s.name for s in tiny.contract.decoder_artifact_inputs]
    return dec.run(dict(zip(names, (dec_in[0], image_context, *dec_in[1:]))))


def _assert_decoder_matches(dec, ctx, dec_in, tiny, rel: float) -> None:
    """The context and decoder artifacts together reproduce the eager prompt decoder on ``dec_in``."""
    with torch.inference_mode():
        ref_masks, ref_iou = (t.numpy() for t in tiny.prompt_decoder(*(torch.from_numpy(a) for a in dec_in)))
    y = _run_decoder(dec, ctx, dec_in, tiny)
    np.testing.assert_allclose(y["masks"], ref_masks, atol=rel * np.abs(ref_masks).max())
    np.testing.assert_allclose(y["iou"], ref_iou, atol=rel * np.abs(ref_iou).max())


@pytest.mark.parametrize("fmt", FORMATS)
def test_artifacts_match_eager(tiny, exported, shared_data, fmt):
    # fp32 programs vs eager: float rounding only. The .pte decoder was off by up to 5% of the logit range
    # while ExecuTorch read the channels-last dense position encoding as contiguous.
    out, _ = exported(fmt)
    _, _, x, dec_in = _real_inputs(tiny, shared_data)
    enc = load_artifact(out / "encoder", threads=1)
    with torch.inference_mode():
        ref = tiny.image_encoder(x).numpy()
    np.testing.assert_allclose(enc.run({"image": x.numpy()})["embeddings"], ref, atol=1e-4)
    _assert_decoder_matches(load_artifact(out / "decoder", threads=1), load_artifact(out / "context", threads=1),
                            dec_in, tiny, 1e-4)
    # with a mask input too (its embedding enters block 0's precomputed projections by linearity)
    masked = (*dec_in[:3], np.random.default_rng(0).normal(0, 4, dec_in[3].shape).astype(np.float32),
              np.ones(1, np.float32))
    _assert_decoder_matches(load_artifact(out / "decoder", threads=1), load_artifact(out / "context", threads=1),
                            masked, tiny, 1e-4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_predictor_on_artifacts_gives_the_eager_masks(tiny, exported, shared_data, fmt):
    out, _ = exported(fmt)
    inst, image, _, _ = _real_inputs(tiny, shared_data)
    eager, art = Predictor(tiny), Predictor(load_sam_artifacts(out, threads=1))
    for p in (eager, art):
        p.set_image(image)
    for kwargs in ({"box": inst.box, "multimask": False}, {"points": [inst.first_click], "labels": [1]}):
        (em, es, el), (am, as_, al) = eager.predict(**kwargs), art.predict(**kwargs)
        np.testing.assert_allclose(al, el, atol=1e-4 * np.abs(el).max())
        np.testing.assert_allclose(as_, es, atol=1e-4)
        assert all(mask_iou(a, e) > 0.999 for a, e in zip(am, em))


def test_decoders_are_single_xnnpack_graphs(exported):
    """Attention, norms and label arithmetic stay inside XNNPACK: .pte (ExecuTorch) and .tflite (LiteRT)."""
    pte = exported("pte")[1]["components"]["decoder"]["delegation"]
    outside = pte["non_delegated_ops"]
    assert not [op for op in outside if any(k in op for k in ("bmm", "expand", "softmax", "layer_norm", "mm", "eq"))], \
        outside
    assert pte["partitions"] <= 2, pte
    tfl = exported("tflite")[1]["components"]["decoder"]["delegation"]
    assert tfl["partitions"] == 1 and not tfl["non_delegated_ops"], tfl  # clamp (RELU_0_TO_1) used to split it


def test_tampered_artifact_is_refused(pte_folder, tmp_path):
    import shutil

    src, _ = pte_folder
    out = tmp_path / "sam"
    shutil.copytree(src, out)
    blob = bytearray((out / "decoder" / "model.pte").read_bytes())
    blob[-1] ^= 0xFF
    (out / "decoder" / "model.pte").write_bytes(bytes(blob))
    with pytest.raises(EdgevitError, match="decoder artifact sha256 .* top-level manifest"):
        load_sam_artifacts(out)
    with pytest.raises(EdgevitError, match="not a SAM artifact folder"):
        load_sam_artifacts(out / "encoder")


def test_eval_sam_cli_takes_an_artifact_folder(pte_folder, shared_data, tmp_path, capsys):
    out, _ = pte_folder
    assert main(["eval-sam", str(out), "--data", str(shared_data / GRABCUT), "--limit", "1", "--prompts", "box",
                 "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "eval_sam.json").read_text())
    assert saved["model"] == "tiny-sam-test (pte/fp32)" and 0 <= saved["miou"]["box"] <= 1


def test_export_cli_dispatches_sam_ids(tmp_path, capsys):
    assert main(["export", "efficientvit-sam-l0", "--format", "onnx", "--out", str(tmp_path / "x")]) == 2
    assert "pass --eval-data DIR (grabcut50 layout" in capsys.readouterr().err


def test_gate_failure_raises_and_keeps_the_old_folder(tiny, shared_data, tmp_path):
    out = tmp_path / "sam"
    out.mkdir()
    (out / "old.txt").write_text("previous export")
    with pytest.raises(GateError, match=r"mask mIoU vs float 100\.00 .*worst layers"):
        export_sam(tiny, "onnx", "fp32", out, eval_data=shared_data / GRABCUT, eval_limit=1, threads=1,
                   gate=MaskGate(max_drop=-1.0), progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["sam"] and (out / "old.txt").read_text() == "previous export"


def test_pte_reads_channels_last_constants_in_order(tmp_path):
    """ExecuTorch serialises a constant's storage and views it as contiguous: a permuted (channels-last)
    buffer that the graph reshapes came back scrambled; the backend now stores constants contiguously."""
    from edgevit.lowering.base import ExportRequest, IOSpec, get_backend
    from edgevit.manifest import Manifest
    from edgevit.models.sam_decoder import RandomFourierPE

    assert RandomFourierPE(8).dense(4).is_contiguous()

    class AddPE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("pe", torch.randn(1, 4, 3, 2).permute(0, 3, 1, 2).clone())  # 1×2×4×3, NHWC strides

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.pe.flatten(2)

    model = AddPE().eval()
    assert not model.pe.is_contiguous()
    x = torch.randn(1, 2, 12)
    ref = model(x).numpy()
    spec = [IOSpec("x", (1, 2, 12))]
    backend = get_backend("pte")
    result = backend.export(ExportRequest.multi(model, spec, ["y"], "fp32", tmp_path / "m.pte"))
    assert any("contiguous" in n and "pe" in n for n in result.notes), result.notes
    runner = backend.load(tmp_path / "m.pte", Manifest("t", "pte", "fp32", "m.pte", "", 0, [spec[0].to_dict()],
                                                       [{"name": "y", "shape": [1, 2, 12]}], {}, {}), threads=1)
    np.testing.assert_allclose(runner.run({"x": x.numpy()})["y"], ref, atol=1e-6)


def test_int8_encoder_is_calibrated_on_photos_and_measured(tiny, shared_data, tmp_path):
    out = tmp_path / "sam"
    top = export_sam(tiny, "onnx", "int8", out, calib=shared_data / SA_EXAMPLES, eval_data=shared_data / GRABCUT,
                     eval_limit=1, threads=1, gate=None, progress=False)
    enc, dec = top["components"]["encoder"], top["components"]["decoder"]
    assert enc["precision"] == "int8" and dec["precision"] == "fp32"
    assert enc["delegation"]["int8_conv"] > 0 and dec["delegation"]["quantize_linear"] == 0
    m = json.loads((out / "encoder" / "manifest.json").read_text())
    assert m["calibration"]["count"] == 3 and m["calibration"]["source"].endswith(SA_EXAMPLES)
    assert 0 <= top["fidelity"]["mask_miou_vs_float"] <= 100
    assert top["fidelity"]["gate_result"].startswith(("passed", "failed, written with --no-gate"))
    art = load_sam_artifacts(out, threads=1)
    _, _, x, _ = _real_inputs(tiny, shared_data)
    emb, image_context = art.encode(x.numpy())
    assert image_context.shape == (1, 4096, 384)
    with torch.inference_mode():
        ref = tiny.image_encoder(x).numpy()
    cos = float((emb * ref).sum() / np.linalg.norm(emb) / np.linalg.norm(ref))
    assert 0.9 < cos < 1 - 1e-7, cos  # int8: close to float, not bit-identical (random weights, 3 photos)
    _assert_decoder_matches(art.decoder, art.context, _real_inputs(tiny, shared_data)[3], tiny, 1e-4)  # fp32 decoder


def test_dynamic_int8_components_record_their_scheme_and_stay_close(tiny, shared_data, tmp_path):
    """.pte int8 encoder and decoder with dynamic activations: run-time ranges at conv / linear inputs; the neck's
    resize products, its layout identity and the decoder's upscaling and mask-input convs float (declared); the
    rewrite exact; embeddings and mask logits close to float."""
    out = tmp_path / "sam"
    top = export_sam(tiny, "pte", "int8", out, calib=shared_data / SA_EXAMPLES, eval_data=shared_data / GRABCUT,
                     eval_limit=1, threads=1, gate=None, progress=False, decoder_precision="int8",
                     activations="dynamic")
    enc, dec = top["components"]["encoder"], top["components"]["decoder"]
    assert enc["precision"] == dec["precision"] == "int8" and enc["activations"] == dec["activations"] == "dynamic"
    assert enc["delegation"]["non_delegated_compute_nodes"] == 0
    m = json.loads((out / "encoder" / "manifest.json").read_text())
    q = m["quantization"]
    assert "is_dynamic" in q["scheme"] and q["calibration_images"] == 0 and m["calibration"]["used"].startswith("no")
    (region,) = q["float_regions"]
    assert "neck.nhwc" in region["modules"] and sum(".op_list.1" in n for n in region["modules"]) == 3
    (neck,) = [s for s in m["substitutions"] if s["name"] == "neck"]
    assert "DynamicSafeNeck" in neck["replacement"] and neck["max_abs_diff"] < 1e-4  # the identity conv is exact
    dq = json.loads((out / "decoder" / "manifest.json").read_text())["quantization"]
    assert [r["name"] for r in dq["float_regions"]][1:] == ["upscaling-and-mask-input-features",
                                                             "prompt-token-side"]
    image_side = ("cross_attn_token_to_image.k_proj", "cross_attn_token_to_image.v_proj",
                  "cross_attn_image_to_token.q_proj", "cross_attn_image_to_token.out_proj")
    assert dq["weighted_ops_int8"] >= 7  # the 4096-token projections (block 0's first three live in the context)
    assert not any(n.endswith(image_side) for n in dq["float_weighted_ops"])
    upscaling = {f"mask_decoder.output_upscaling.up{i}" for i in (1, 2)}
    assert upscaling <= set(dq["float_weighted_ops"])  # TokenUpscaling's linears: float (declared)
    assert any(n.endswith("self_attn.q_proj") for n in dq["float_weighted_ops"])  # token side stays float
    art = load_sam_artifacts(out, threads=1)
    _, _, x, dec_in = _real_inputs(tiny, shared_data)
    emb, _ = art.encode(x.numpy())
    with torch.inference_mode():
        ref = tiny.image_encoder(x).numpy()
        ref_masks = tiny.prompt_decoder(*(torch.from_numpy(a) for a in dec_in))[0].numpy()
    assert 25 < sqnr_db(ref, emb) < 80  # quantized (not float), and close
    assert 20 < sqnr_db(ref_masks, _run_decoder(art.decoder, art.context, dec_in, tiny)["masks"]) < 80


def test_dynamic_activations_are_refused_where_not_implemented(tiny, shared_data, tmp_path):
    for fmt, precision, dec, match in (("onnx", "int8", "fp32", "onnx: int8 activations 'dynamic' are not implemented"),
                                       ("pte", "fp32", "fp32", "applies to int8 components"),
                                       ("tflite", "int8", "int8", "tflite: a dynamic int8 decoder needs declared")):
        with pytest.raises(EdgevitError, match=match):
            export_sam(tiny, fmt, precision, tmp_path / "x", calib=shared_data / SA_EXAMPLES, decoder_precision=dec,
                       eval_data=shared_data / GRABCUT, progress=False, activations="dynamic")
    assert not (tmp_path / "x").exists()


def test_bad_keep_float_and_ranges_are_refused_before_any_work(tiny, shared_data, tmp_path):
    """keep_float names the image encoder's modules; both it and --ranges are checked before lowering starts."""
    kw = dict(calib=shared_data / SA_EXAMPLES, eval_data=shared_data / GRABCUT, progress=False)
    with pytest.raises(EdgevitError, match="did you mean 'neck'"):
        export_sam(tiny, "onnx", "int8", tmp_path / "x", keep_float=("necks",), **kw)
    with pytest.raises(EdgevitError, match="pte: activation ranges 'percentile' are not implemented"):
        export_sam(tiny, "pte", "int8", tmp_path / "x", ranges="percentile", **kw)
    assert not list(tmp_path.iterdir())


def test_tflite_dynamic_int8_encoder(tiny, exported, shared_data, tmp_path):
    """.tflite int8 with dynamic activations: ai-edge-quantizer's dynamic recipe on the fp32 flatbuffer (no
    calibration, no NhwcIdentity), embeddings close to float."""
    out = tmp_path / "sam"
    top = export_sam(tiny, "tflite", "int8", out, calib=shared_data / SA_EXAMPLES, eval_data=shared_data / GRABCUT,
                     eval_limit=1, threads=1, gate=None, progress=False, activations="dynamic")
    assert top["components"]["encoder"]["activations"] == "dynamic"
    m = json.loads((out / "encoder" / "manifest.json").read_text())
    assert "dynamic_wi8_afp32" in m["quantization"]["scheme"] and m["quantization"]["calibration_images"] == 0
    assert not any(s["name"] == "neck" for s in m["substitutions"])  # the .pte layout workaround is not applied
    _, _, x, _ = _real_inputs(tiny, shared_data)
    emb, _ = load_sam_artifacts(out, threads=1).encode(x.numpy())
    with torch.inference_mode():
        ref = tiny.image_encoder(x).numpy()
    assert 25 < sqnr_db(ref, emb) < 80
    fp32_size = exported("tflite")[1]["components"]["encoder"]["size_bytes"]
    assert m["size_bytes"] < 0.5 * fp32_size  # int8 weights


def test_export_cli_takes_dynamic_activations_for_sam_only(tmp_path, capsys):
    args = ["export", "efficientvit-seg-b0-cityscapes", "--format", "pte", "--precision", "int8", "--activations",
            "dynamic", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    assert "implemented for SAM exports so far" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_l0_int8_onnx_encoder_passes_the_gate_all_int8(shared_data, tmp_path):
    """Real size: the L0 encoder (random weights, seed 0) as static int8 QDQ with Q/DQ only at conv / matmul
    inputs passes the 99.0 mask gate with no layer kept float (onnxruntime's default placement gave 98.54)."""
    from edgevit.models import create_model

    torch.manual_seed(0)
    model = create_model("efficientvit-sam-l0").eval()
    out = tmp_path / "l0"
    top = export_sam(model, "onnx", "int8", out, calib=shared_data / "sam", eval_data=shared_data / GRABCUT,
                     eval_limit=8, threads=2, progress=False)
    fid = top["fidelity"]
    assert fid["gate_result"] == "passed" and fid["mask_miou_vs_float"] >= 99.0, fid["summary"]
    enc = json.loads((out / "encoder" / "manifest.json").read_text())
    assert not enc["quantization"].get("kept_float") and enc["quantization"]["int8_conv"] >= 60
    assert enc["quantization"]["placement"].startswith("weighted: Q/DQ only at the inputs of Conv")
