"""int8 prompt decoder: the declared float region (prompt arithmetic + attention softmax) maps onto the graph.

Random-weight SAM prompt decoder (the real one: 256-d, depth 2) on random prompts; one ``torch.export`` per
module. The accuracy effect of the region is measured on real photos by ``export_sam`` / sam_bench, not here.
"""

from __future__ import annotations

import functools

import pytest
import torch

from edgevit.lowering.float_region import fx_float_nodes, fx_module_paths
from edgevit.models.sam_decoder import MASKED, MaskDecoder, PromptDecoder, PromptEncoder
from edgevit.sam.rewrite import AttentionSoftmax, SparsePrompt, decoder_float_regions, friendly_decoder

P = 16


def _inputs(with_box: bool) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    labels = torch.full((1, P), -1.0)
    labels[0, :3] = torch.tensor([1.0, 0.0, 1.0])
    if with_box:
        labels[0, 3:5] = torch.tensor([2.0, 3.0])
    return (torch.randn(1, 256, 64, 64), torch.rand(1, P, 2) * 1024, labels, torch.randn(1, 1, 256, 256),
            torch.ones(1))


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    eager = PromptDecoder(PromptEncoder(), MaskDecoder()).eval()
    friendly, context, _ = friendly_decoder(eager, _inputs(True))
    return eager, friendly, context


def _with_context(x: tuple, context) -> tuple:
    """Eager decoder inputs → the export decoder's (image_context after the embeddings)."""
    with torch.inference_mode():
        return (x[0], context(x[0]), *x[1:])


@pytest.fixture(scope="module")
def graph(decoder):
    return torch.export.export(decoder[1], _with_context(_inputs(True), decoder[2])).module().graph


@pytest.mark.parametrize("with_box", [True, False])
def test_friendly_decoder_with_its_float_modules_equals_eager(decoder, with_box):
    eager, friendly, context = decoder
    x = _inputs(with_box)
    with torch.inference_mode():
        (em, ei), (fm, fi) = eager(*x), friendly(*_with_context(x, context))
    torch.testing.assert_close(fm, em, atol=1e-4 * float(em.abs().max()), rtol=0)
    torch.testing.assert_close(fi, ei, atol=1e-4, rtol=0)


def test_region_covers_prompt_arithmetic_and_every_softmax(decoder):
    _, friendly, _ = decoder
    (region,) = decoder_float_regions(friendly)
    softmaxes = [n for n, m in friendly.named_modules() if isinstance(m, AttentionSoftmax)]
    assert len(softmaxes) == 7  # 2 blocks x 3 attentions + the final token-to-image attention
    assert set(region.modules) == {"sparse_prompt", *softmaxes}
    assert isinstance(friendly.get_submodule("sparse_prompt"), SparsePrompt)
    assert "-1e4" in region.why and not region.output_tail


def test_region_keeps_the_masked_bias_float_and_the_projections_int8(graph, decoder):
    regions = decoder_float_regions(decoder[1])
    floats = fx_float_nodes(graph, regions)
    calls = [n for n in graph.nodes if n.op == "call_function"]
    softmax = [n for n in calls if "softmax" in str(n.target)]
    assert len(softmax) == 7 and all(n.name in floats for n in softmax)
    masked = [n for n in calls if MASKED in n.args]  # the key bias: (1 - attended) * MASKED
    assert masked and all(n.name in floats for n in masked)
    for n in calls:  # every add of a key bias into attention logits is float
        if "add" in str(n.target) and any("softmax" in p for p in fx_module_paths(n)):
            assert n.name in floats
    linears = [n for n in calls if "linear" in str(n.target) and n.name not in floats]
    assert len(linears) >= 7 * 4  # q/k/v/out projections of every attention stay quantizable
    assert not any(n.name in floats for n in calls if "conv" in str(n.target))


def test_graph_has_no_integer_scalar_constants(graph):
    """An int ``2`` or ``1 - x`` became int64 / scalar tensor constants: LiteRT's int8 observers crashed on
    them (histogram of a Long tensor) and ExecuTorch copied them outside the XNNPACK delegate."""
    gm = graph.owning_module
    consts = [functools.reduce(getattr, n.target.split("."), gm) for n in graph.nodes if n.op == "get_attr"]
    assert not [c for c in consts if isinstance(c, torch.Tensor) and not c.is_floating_point()]
    assert not [n for n in graph.nodes if n.op == "call_function" and "rsub" in str(n.target)]


def test_int8_decoder_export_keeps_the_region_float_and_records_it(shared_data, tmp_path):
    """ONNX QDQ (the quickest int8 backend): every Softmax reads a float tensor, the projections are int8."""
    import json

    import onnx

    from edgevit.models.efficientvit_sam import SamContract, build
    from edgevit.models.layers import LargeBackboneCfg
    from edgevit.sam.export import export_sam

    torch.manual_seed(0)
    model = build(LargeBackboneCfg((8, 16, 16, 32, 32), (0, 0, 0, 1, 1)),
                  (("stage4", "stage3", "stage2"), (32, 32, 16)), 1, 1).eval()
    model.contract, model.model_id = SamContract(256), "tiny-sam-test"
    out = tmp_path / "sam"
    top = export_sam(model, "onnx", "fp32", out, calib=shared_data / "sam/sa_examples",
                     eval_data=shared_data / "sam/grabcut50", eval_limit=1, threads=1, gate=None, progress=False,
                     decoder_precision="int8")
    assert top["components"]["decoder"]["precision"] == "int8"
    (region,) = json.loads((out / "decoder" / "manifest.json").read_text())["quantization"]["float_regions"]
    assert "sparse_prompt" in region["modules"] and sum(m.endswith(".softmax") for m in region["modules"]) == 7
    graph = onnx.load(str(out / "decoder" / "model.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    softmax = [n for n in graph.node if n.op_type == "Softmax"]
    assert len(softmax) == 7
    assert all(producer[n.input[0]].op_type != "DequantizeLinear" for n in softmax)
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 20  # the rest is int8
