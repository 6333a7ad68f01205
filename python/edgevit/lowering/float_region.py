"""Declared float regions: parts of a graph that int8 export leaves in float32 by design, not by trial.

A task (or model) declares a :class:`FloatRegion` when it knows that int8 activations there cost accuracy
out of proportion to their compute, e.g. a super-resolution net's global bicubic skip and output sum: the
skip carries the whole image at full precision and its int8 rounding lands directly in the output
(:mod:`edgevit.tasks.super_resolution` has the measurements). A region is

- ``modules``: qualified module names whose every op computes in float32 with float weights, and which
  read their inputs un-quantized (the float tensor itself, not a quantized neighbour's QDQ copy of it);
- ``output_tail``: the ops between the last weighted ops (conv / linear) and the graph outputs (sums,
  clamps, pixel shuffles, slices) compute in float32 and the outputs are never re-quantized. The weighted
  ops themselves stay int8 (their outputs are dequantized once).

Each backend maps a region onto its graph: :func:`fx_float_nodes` for the PT2E flows (ExecuTorch, LiteRT),
:func:`onnx_float_nodes` and :func:`unquantize_float_inputs` for ONNX QDQ.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# fx call_function targets (str(target) prefixes) and ONNX op types that end an output tail.
FX_WEIGHTED = ("aten.conv1d", "aten.conv2d", "aten.convolution", "aten.linear", "aten.conv_transpose")
ONNX_WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass(frozen=True)
class FloatRegion:
    """A declared float32 part of an int8 graph (module docstring). ``why``: the reason, with numbers."""

    name: str
    modules: tuple[str, ...] = ()
    output_tail: bool = False
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "modules": list(self.modules), "output_tail": self.output_tail, "why": self.why}


def region_modules(regions: Sequence[FloatRegion]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(m for r in regions for m in r.modules))


def wants_output_tail(regions: Sequence[FloatRegion]) -> bool:
    return any(r.output_tail for r in regions)


# --- fx graphs (torch.export / PT2E) -------------------------------------------------------------
def fx_module_paths(node: Any) -> list[str]:
    """Qualified module names an fx node was traced in (``nn_module_stack``), outermost first; accepts both
    the ``L['self'].a.b`` and the ``L['self']['a']['b']`` spellings."""
    paths = []
    for value in (node.meta.get("nn_module_stack") or {}).values():
        path = value[0] if isinstance(value, tuple) else str(value)
        if path.startswith("L['self']"):
            path = path[len("L['self']"):].lstrip(".")
        paths.append(path.replace("[", ".").replace("]", "").replace("'", "").strip("."))
    return paths


def covered(path: str, names: Iterable[str]) -> bool:
    """Whether the module ``path`` is one of ``names`` or inside one of them."""
    return any(path == n or path.startswith(n + ".") for n in names)


def fx_owner(node: Any, names: Sequence[str]) -> str | None:
    """The first of ``names`` (qualified module names) that fx ``node`` was traced in, else ``None``."""
    for path in fx_module_paths(node):
        for name in names:
            if covered(path, (name,)):
                return name
    return None


def fx_float_nodes(graph: Any, regions: Sequence[FloatRegion]) -> set[str]:
    """Names of the ``call_function`` nodes of fx ``graph`` that ``regions`` keep float."""
    modules = region_modules(regions)
    found = {n.name for n in graph.nodes if n.op == "call_function" and modules
             and any(covered(p, modules) for p in fx_module_paths(n))}
    if wants_output_tail(regions):
        outputs = [n for n in graph.nodes if n.op == "output"]
        stack = [a for o in outputs for a in o.all_input_nodes]
        while stack:
            node = stack.pop()
            if node.op != "call_function" or node.name in found or str(node.target).startswith(FX_WEIGHTED):
                continue
            found.add(node.name)
            stack.extend(node.all_input_nodes)
    return found


def fx_filter(regions: Sequence[FloatRegion], keep_float: Sequence[str] = ()):
    """A PT2E quantizer node filter: ``True`` (annotate) unless the node is in a region or a kept module.

    The float set is computed once per graph the quantizer shows it (the filter sees nodes, not graphs)."""
    cache: dict[int, set[str]] = {}

    def quantize(node: Any) -> bool:
        if keep_float and fx_owner(node, keep_float) is not None:
            return False
        if not regions:
            return True
        key = id(node.graph)
        if key not in cache:
            cache[key] = fx_float_nodes(node.graph, regions)
        return node.name not in cache[key]

    return quantize


# --- ONNX graphs ---------------------------------------------------------------------------------
def onnx_float_nodes(proto: Any, regions: Sequence[FloatRegion], module_nodes: dict[str, list[str]]) -> list[str]:
    """Names of the nodes of the float ONNX graph ``proto`` that ``regions`` keep float; ``module_nodes``:
    ONNX node names per region module (:func:`edgevit.lowering.onnx.nodes_from_modules`)."""
    found = dict.fromkeys(n for m in region_modules(regions) for n in module_nodes.get(m, []))
    if wants_output_tail(regions):
        producer = {out: node for node in proto.graph.node for out in node.output}
        stack = [producer[o.name] for o in proto.graph.output if o.name in producer]
        while stack:
            node = stack.pop()
            if node.name in found or node.op_type in ONNX_WEIGHTED:
                continue
            found[node.name] = None
            stack.extend(producer[i] for i in node.input if i in producer)
    return list(found)


def unquantize_float_inputs(qproto: Any, float_nodes: Iterable[str]) -> int:
    """Make the ``float_nodes`` of a QDQ graph read float tensors: an input that arrives through an
    activation QuantizeLinear → DequantizeLinear pair is taken from before the pair, a graph output produced
    by such a pair from a float node becomes an Identity of the float tensor, and pairs left without
    readers are removed. Edits ``qproto`` in place; returns the number of inputs rewired."""
    graph = qproto.graph
    nodes = {n.name: n for n in graph.node}
    constants = {i.name for i in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    floats = {n for n in float_nodes if n in nodes}

    def float_source(tensor: str) -> str | None:
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in constants:
            return None
        return q.input[0]

    rewired = 0
    for name in floats:
        node = nodes[name]
        for k, tensor in enumerate(node.input):
            src = float_source(tensor)
            if src is not None:
                node.input[k] = src
                rewired += 1
    for out in graph.output:
        src = float_source(out.name)
        if src is not None and producer.get(src) is not None and producer[src].name in floats:
            dq = producer[out.name]
            dq.op_type, dq.domain = "Identity", ""
            del dq.input[:]
            dq.input.append(src)
            del dq.attribute[:]
            rewired += 1
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return rewired
