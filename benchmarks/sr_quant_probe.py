"""Which int8 quantizers cost an SR model its PSNR: ONNX QDQ int8 with chosen activation Q/DQ pairs removed.

    .venv/bin/python benchmarks/sr_quant_probe.py [--model efficientvit-sr-s-x2] [--sweep] [--ranges minmax|percentile]
        [--placement weighted|all]

Exports the model (trained weights from models/weights/) to fp32 ONNX at its tile, quantizes it the way
``edgevit export --format onnx --precision int8`` does (per-channel symmetric weights, symmetric per-tensor
activations with MinMax ranges, or ``--ranges percentile``, at ``--placement``'s Q/DQ pairs, from real photos that are not Set5), and measures mean
PSNR-Y on Set5 (tiled by the contract) for: all int8; the declared float region (``SuperResolutionTask.float_regions``: global skip + output tail);
the skip float only; and the region with each of its tail tensors quantized again one at a time (the marginal
cost of that one quantizer). ``--sweep`` also removes every activation Q/DQ pair of the all-int8 graph one at a
time (a single removal shows little when a neighbouring pair re-quantizes the same values).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def strip_pairs(proto, tensors: set[str]):
    """A copy of QDQ ``proto`` without the activation Q/DQ pairs on ``tensors`` (DQ becomes Identity)."""
    m = copy.deepcopy(proto)
    g = m.graph
    readers = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    drop = set()
    for q in [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in tensors]:
        for dq in readers.get(q.output[0], []):
            dq.op_type, dq.domain = "Identity", ""
            del dq.input[:]
            dq.input.append(q.input[0])
            del dq.attribute[:]
        drop.add(q.name)
    keep = [n for n in g.node if n.name not in drop]
    del g.node[:]
    g.node.extend(keep)
    return m


def main() -> int:
    import onnx
    import onnxruntime as ort

    from edgevit.cards import bundled_weights
    from edgevit.lowering.base import IOSpec
    from edgevit.lowering.float_region import onnx_float_nodes
    from edgevit.lowering.onnx import export_fp32, nodes_from_modules, quantize_qdq
    from edgevit.lowering.rewrite import export_friendly
    from edgevit.models import create_model
    from edgevit.sr.evaluate import sr_metrics, upscale_image
    from edgevit.tasks import task_for

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientvit-sr-s-x2")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sr" / "Set5"))
    p.add_argument("--calib", default=str(ROOT.parent / "shared" / "data" / "seg" / "voc2012_val14" / "images"))
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--ranges", default="minmax", help="activation range method: minmax | percentile")
    p.add_argument("--placement", default="weighted", help="int8 placement: weighted | all")
    a = p.parse_args()
    torch.set_num_threads(1)
    w = bundled_weights(a.model)
    model = create_model(a.model, weights=w if w.is_file() else None)
    task, c = task_for(model.contract), model.contract
    calib = task.model_inputs(c, task.load_images(a.calib, None, 16, c))
    fid = task.load_images(a.data, None, None, c)
    example = torch.from_numpy(calib[0])
    friendly, _ = export_friendly(model, example)
    region = task.float_regions(friendly, example)
    ins, outs = task.io_specs(c)
    tmp = Path(tempfile.mkdtemp(prefix="sr-probe-"))
    proto = export_fp32(friendly, [IOSpec.from_dict(d) for d in ins], [d["name"] for d in outs])
    (tmp / "fp32.onnx").write_bytes(proto.SerializeToString())
    module_nodes = nodes_from_modules(proto, region[0].modules)
    skip_nodes = [n for m in region[0].modules for n in module_nodes[m]]
    region_nodes = onnx_float_nodes(proto, region, module_nodes)

    def quant(exclude=(), floats=()):
        out = tmp / "q.onnx"
        quantize_qdq(tmp / "fp32.onnx", out, calib, exclude, floats, a.ranges, a.placement)
        return onnx.load(str(out))

    def psnr(graph) -> float:
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.log_severity_level = 1, 3
        s = ort.InferenceSession(graph.SerializeToString(), o, providers=["CPUExecutionProvider"])
        fn = lambda x: s.run(None, {"image": x})[0]  # noqa: E731
        return float(np.mean([sr_metrics(upscale_image(fn, lr, c), hr, c.scale, g)[0]
                              for lr, hr, g in zip(fid.lr, fid.hr, fid.gray)]))

    ref = psnr(proto)
    print(f"{a.model} ({'trained' if w.is_file() else 'UNTRAINED'}), Set5 x{c.scale}, tile {c.tile}: "
          f"float {ref:.3f} dB, {a.ranges} activation ranges, {a.placement} Q/DQ placement\n")
    print("| graph | PSNR-Y drop vs float (dB) |\n|---|---|")
    all_int8, skip_float, with_region = quant(), quant(skip_nodes), quant((), region_nodes)
    for name, g in (("all int8", all_int8), (f"skip {region[0].modules} float", skip_float),
                    ("declared region float (skip + output tail)", with_region)):
        print(f"| {name} | {ref - psnr(g):.3f} |")
    base = psnr(with_region)
    # The tail tensors: outputs of the region's nodes (and their inputs) that the all-int8 graph quantizes.
    region_tensors = {t for n in proto.graph.node if n.name in region_nodes for t in (*n.input, *n.output)}
    quantized = {n.input[0] for n in skip_float.graph.node if n.op_type == "QuantizeLinear"}
    print("\nMarginal cost of quantizing one tensor of the region again (the rest of the region float):\n")
    print("| tensor | produced by | drop vs float | cost |\n|---|---|---|---|")
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    for t in sorted(region_tensors & quantized):
        g = strip_pairs(skip_float, region_tensors & quantized - {t})
        d = ref - psnr(g)
        print(f"| {t} | {producer.get(t, 'graph input')} | {d:.3f} | {d - (ref - base):+.3f} |")
    if a.sweep:
        print("\nOne activation Q/DQ pair removed from the all-int8 graph (gain vs all int8, dB):\n")
        rows = []
        all_p = psnr(all_int8)
        for t in sorted({n.input[0] for n in all_int8.graph.node if n.op_type == "QuantizeLinear"} - {
                i.name for i in all_int8.graph.initializer}):
            rows.append((psnr(strip_pairs(all_int8, {t})) - all_p, t, producer.get(t, "graph input")))
        print("| tensor | produced by | gain |\n|---|---|---|")
        for gain, t, op in sorted(rows, reverse=True)[:15]:
            print(f"| {t} | {op} | {gain:+.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
