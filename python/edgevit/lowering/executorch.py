"""ExecuTorch (``.pte``) backend: XNNPACK-delegated fp32 and int8 programs.

Export: ``torch.export`` on the request's example inputs (a tuple, one tensor per named input) → (int8:
PT2E with the XNNPACK quantizer, calibrated on real samples) →
``to_edge_transform_and_lower`` with the XNNPACK partitioner → ``.pte``. The model should already be
rewritten by :func:`edgevit.lowering.rewrite.export_friendly`; then the whole graph is one XNNPACK delegate.
Inputs may be float32, int32 or int64 (integer inputs feed ops XNNPACK leaves to the portable kernels unless
the model casts them to float first; the delegation report says so); outputs come back in ``forward``'s order.

int8 scheme: weights int8 symmetric per output channel, activations int8 affine per tensor (histogram
observer) on conv / linear / add / cat outputs; ops the quantizer does not annotate (the LiteMLA attention
products and its normaliser) run in float32 inside the same delegate, between dequantize/quantize.
Modules named in ``keep_float`` are not annotated at all, so their weights and arithmetic stay float32.
``placement="weighted"`` (static): adds, multiplies and concatenations are not annotated either, so residual
streams stay float32 and only the convs / linears (inputs, weights and outputs, as XNNPACK's int8 kernels need)
are int8. SAM L0 encoder, seed 0: embeddings 31.3 → 34.4 dB, mask mIoU vs float 98.79 → 99.18 (gate passes);
95 → 102 ms (benchmarks/sam_bench.py, 2 threads; dynamic activations 130 ms).
``activations="dynamic"``: the same int8 weights, but activations are quantized at run time (XNNPACK qd8:
each tensor's own range, per image for convolutions, per row for linears) only where they enter a conv /
linear; adds, activation functions and everything else stay float32, so there is no calibration to mis-fit
and no requantization between layers. The quantizer has no dynamic pattern for depthwise convs or for a
conv followed by ReLU: those stay float32 (listed in the report's ``float_weighted_ops``). L0 SAM backbone,
session measurement: output SQNR 40.9 vs 34.4 dB static, 86 vs 77 ms.
ExecuTorch 1.5's channels-last pass mis-rewrites a dynamically quantized conv whose input is produced by a
layout-sensitive op (linear, pixel shuffle): its dynamic-quant traceback walks past the q/dq pair into
ordinary compute, and the graph fails at run time ("Propagating input shapes failed"; fixed upstream by
pytorch/executorch#21637, merged 2026-08-07, not in the pinned 1.5.1). Models must keep such producers
float and put a conv-shaped op between (see :class:`edgevit.sam.rewrite.NhwcIdentity`); the export gate's
first load-and-run catches it.

Runtime: ``executorch.runtime``; its XNNPACK thread pool is process-wide and is resized with the
(experimental) ``_unsafe_reset_threadpool`` binding when ``threads`` is given, only while no other runner
is loaded (a loaded program keeps using the pool it was loaded with). Each run holds torch's own intra-op
pool at one thread so that its OpenMP workers do not spin next to XNNPACK's.
"""

from __future__ import annotations

import gc
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .. import errors
from ..errors import EdgevitError
from ..quantize.placement import INT8_PLACEMENTS, check_placement
from ..runtime.base import CheckedRunner
from .base import (ExportRequest, ExportResult, check_activations, check_calibration, check_dtypes,
                   check_keep_float, check_ranges, flat_outputs)
from .float_region import FloatRegion, covered, fx_filter, fx_float_nodes, fx_module_paths, fx_owner

if TYPE_CHECKING:
    from ..manifest import Manifest

EXTRA = "executorch"
INT8_SCHEME = ("XNNPACKQuantizer (PT2E): weights int8 symmetric per-output-channel; activations int8 affine "
               "per-tensor (HistogramObserver); ops it does not annotate stay float32")
INT8_DYNAMIC_SCHEME = ("XNNPACKQuantizer (PT2E, is_dynamic): weights int8 symmetric per-output-channel; activations "
                       "int8 quantized at run time from each tensor's own range (XNNPACK qd8) at conv / linear "
                       "inputs only; every other op float32")
# Nodes that mark a delegate's outputs rather than computing anything.
_STRUCTURAL = {"getitem"}


def _require(module: str, purpose: str):
    # Looked up through the module so that tests can simulate a missing toolchain.
    return errors.require(module, EXTRA, purpose)


def _tool_versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    for name, module in (("executorch", "executorch.version"), ("torchao", "torchao")):
        versions[name] = str(getattr(_require(module, "ExecuTorch export"), "__version__", "unknown"))
    return versions


def _calibration_tensors(request: ExportRequest) -> list[tuple[torch.Tensor, ...]]:
    """The calibration samples as tuples of tensors; int8 without real samples of the input specs is refused."""
    if request.precision != "int8":
        return []
    samples = check_calibration(request.calibration, request.inputs, "pte")
    return [tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in xs) for xs in samples]


def _widen_keep_float(model: nn.Module, names: Sequence[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """``names`` plus the modules that must stay float with them for XNNPACK to lower the graph.

    A float LiteMLA aggregation conv reading an int8 qkv output makes that quantized tensor feed both an
    NHWC conv and the NCHW attention reshape; ExecuTorch 1.5's ChannelsLastTaggedReshapePass then asserts
    ("Attempting to convert non-NHWC compatible node to NHWC"). Keeping the qkv conv float too avoids it.
    """
    from ..models.layers import LiteMLA

    added: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LiteMLA) or covered(f"{name}.qkv", names):
            continue
        kept = [f"{name}.aggreg.{i}.0" for i in range(len(module.aggreg)) if covered(f"{name}.aggreg.{i}.0", names)]
        if kept:
            added[f"{name}.qkv"] = (f"kept float with {kept[0]}: an int8 qkv output feeding a float aggregation "
                                    "conv does not lower to XNNPACK (ExecuTorch 1.5)")
    return (*names, *added), added


_WEIGHTED_OPS = ("aten.conv2d", "aten.linear", "aten.conv1d", "aten.convolution")


# ``placement="weighted"``: the quantizer's add / mul / cat patterns are not annotated (those ops run in float32
# inside the delegate, between the int8 convs / linears whose outputs XNNPACK still writes in int8)
UNWEIGHTED_TARGETS = ("aten.add.Tensor", "aten.add_.Tensor", "aten.mul.Tensor", "aten.mul_.Tensor", "aten.cat.default")


def _quantization_report(gm: torch.fx.GraphModule, keep_float: Sequence[str]) -> dict[str, Any]:
    """Count conv/linear ops with int8 (dequantized) weights vs float weights in the converted graph."""
    quantized, float_ops = 0, []
    kept = Counter()
    for node in gm.graph.nodes:
        if node.op != "call_function" or not str(node.target).startswith(_WEIGHTED_OPS):
            continue
        weight = node.args[1] if len(node.args) > 1 else None
        is_q = isinstance(weight, torch.fx.Node) and "dequantize" in str(weight.target)
        if is_q:
            quantized += 1
        else:
            paths = fx_module_paths(node)
            float_ops.append(paths[-1] if paths else node.name)
            owner = fx_owner(node, keep_float)
            if owner is not None:
                kept[owner] += 1
    float_compute = Counter(str(n.target).split(".")[1] for n in gm.graph.nodes
                            if n.op == "call_function" and str(n.target) in ("aten.bmm.default", "aten.div.Tensor"))
    int8_elementwise = sum(  # int8 in and out: every input dequantized, every reader a quantize
        1 for n in gm.graph.nodes if str(n.target) in UNWEIGHTED_TARGETS
        and all("dequantize" in str(a.target) for a in n.all_input_nodes)
        and n.users and all(str(u.target).startswith("quantized_decomposed.quantize") for u in n.users))
    return {
        "scheme": INT8_SCHEME,
        "float32_attention_ops": dict(float_compute),  # LiteMLA products and normaliser, not annotated
        "weighted_ops_int8": quantized,
        "weighted_ops_float": len(float_ops),
        "float_weighted_ops": float_ops,
        "kept_float": {name: kept.get(name, 0) for name in keep_float},
        "int8_elementwise_ops": int8_elementwise,  # adds / muls / cats computed between int8 tensors
    }


def _delegation_report(edge) -> dict[str, Any]:
    backend_debug = _require("executorch.devtools.backend_debug", "ExecuTorch delegation report")
    info = backend_debug.get_delegation_info(edge.exported_program().graph_module)
    outside: dict[str, int] = {}
    df = info.get_operator_delegation_dataframe()
    for _, row in df.iterrows():
        op, n = str(row["op_type"]), int(row["occurrences_in_non_delegated_graphs"])
        if op != "Total" and n and op not in _STRUCTURAL:
            outside[op] = n
    return {
        "backend": "XnnpackBackend",
        "delegated_nodes": int(info.num_delegated_nodes),
        "non_delegated_nodes": int(info.num_non_delegated_nodes),
        "non_delegated_compute_nodes": int(sum(outside.values())),
        "partitions": int(info.num_delegated_subgraphs),
        "non_delegated_ops": outside,
        "note": "non_delegated_nodes counts the getitem nodes that read delegate outputs; "
                "non_delegated_compute_nodes excludes them",
    }


def contiguous_constants(model: nn.Module) -> list[str]:
    """Give every non-contiguous parameter, buffer or tensor attribute of ``model`` contiguous storage (same
    values, in place); returns their names.

    ExecuTorch 1.5 serialises a constant's storage but later views it as contiguous: a channels-last
    constant that is reshaped in the graph is silently read in the wrong order (portable and XNNPACK alike).
    """
    fixed = []
    with torch.no_grad():
        for prefix, module in model.named_modules():
            for key, value in list(module.__dict__.get("_parameters", {}).items()) + \
                    list(module.__dict__.get("_buffers", {}).items()) + list(vars(module).items()):
                if isinstance(value, torch.Tensor) and not value.is_contiguous():
                    if isinstance(value, nn.Parameter) or key in module.__dict__.get("_buffers", {}):
                        value.data = value.data.contiguous()
                    else:
                        setattr(module, key, value.contiguous())
                    fixed.append(f"{prefix}.{key}" if prefix else key)
    return fixed


def _torch_export(model: nn.Module, example: tuple[torch.Tensor, ...]):
    try:
        return torch.export.export(model, example)
    except Exception as exc:  # torch.export raises many types; the first line says what failed
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        shapes = ", ".join(str(tuple(x.shape)) for x in example)
        raise EdgevitError(f"pte: torch.export failed for input {shapes} ({type(exc).__name__}: "
                           f"{first}); export the model rewritten by export_friendly for this input size") from exc


def _node_filter(float_regions: Sequence[FloatRegion], keep_float: Sequence[str], weighted: bool):
    """The quantizer's node filter (True: annotate), or None when every node may be annotated."""
    if not (keep_float or float_regions or weighted):
        return None
    inner = fx_filter(float_regions, keep_float)
    return lambda node: inner(node) and not (weighted and str(node.target) in UNWEIGHTED_TARGETS)


def _quantize(model: nn.Module, example: tuple[torch.Tensor, ...], calibration: list[tuple[torch.Tensor, ...]],
              keep_float: Sequence[str], float_regions: Sequence[FloatRegion] = (), activations: str = "static",
              placement: str = "all") -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    xq = _require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "ExecuTorch int8 export")
    pt2e = _require("torchao.quantization.pt2e.quantize_pt2e", "ExecuTorch int8 export")
    dynamic = activations == "dynamic"
    config = xq.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    quantizer = xq.XNNPACKQuantizer().set_global(config)
    keep_float, added = _widen_keep_float(model, keep_float)
    node_filter = _node_filter(float_regions, keep_float, placement == "weighted")
    if node_filter is not None:
        # XNNPACKQuantizer.set_module_name(name, None) is refused ("None is not supported yet"); a node
        # filter that skips every node traced under a kept module (or in a float region) has the intended effect.
        quantizer.set_filter_function(node_filter)
    graph = _torch_export(model, example).module()
    region_nodes = sorted(fx_float_nodes(graph.graph, float_regions)) if float_regions else []
    prepared = pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for xs in calibration[:1] if dynamic else calibration:  # dynamic ranges: nothing to observe
            prepared(*xs)
    converted = pt2e.convert_pt2e(prepared)
    report = _quantization_report(converted, keep_float)
    report["activations"] = activations
    if dynamic:
        report["scheme"] = INT8_DYNAMIC_SCHEME
    else:
        report["placement"] = f"{placement}: {INT8_PLACEMENTS.get(placement).description}"
    report["calibration_images"] = 0 if dynamic else len(calibration)
    report["keep_float_method"] = "quantizer node filter on the traced module path (nn_module_stack)"
    report["kept_float_added"] = added
    if float_regions:
        report["float_region_nodes"] = region_nodes  # fx nodes not annotated: float32 in the delegate
    return converted, report


class ExecuTorchBackend:
    name = "pte"
    extension = ".pte"
    precisions = ("fp32", "int8")
    activation_modes = ("static", "dynamic")
    range_methods: tuple[str, ...] = ()  # the PT2E quantizer's HistogramObserver only
    placements = ("all", "weighted")
    dtypes = ("float32", "int32", "int64")
    extra = EXTRA

    def export(self, request: ExportRequest) -> ExportResult:
        if request.precision not in self.precisions:
            raise EdgevitError(f"pte: precision {request.precision!r} is not supported; "
                               f"choose one of {self.precisions}")
        check_dtypes(request, "pte", self.dtypes)
        check_activations(request.precision, request.activations, "pte", self.activation_modes)
        check_ranges(request.precision, request.ranges, "pte", self.range_methods)
        check_placement(request.precision, request.activations, request.placement, "pte", self.placements)
        calibration = _calibration_tensors(request)
        exir = _require("executorch.exir", "ExecuTorch export")
        partitioner = _require("executorch.backends.xnnpack.partition.xnnpack_partitioner", "ExecuTorch export")
        versions = _tool_versions()
        check_keep_float(request.model, request.keep_float)
        notes: list[str] = []

        model = request.model.eval()
        made_contiguous = contiguous_constants(model)
        if made_contiguous:
            notes.append(f"constants given contiguous storage before export: {made_contiguous}")
        example = calibration[0] if calibration else request.example_inputs()
        quant = None
        if request.precision == "int8":
            model, quant = _quantize(model, example, calibration, request.keep_float, request.float_regions,
                                     request.activations, request.placement or self.placements[0])
        elif request.keep_float:
            notes.append("keep_float ignored: fp32 export keeps every module in float")
        program = _torch_export(model, example)
        flat_outputs(tuple(program.graph_signature.user_outputs), request.outputs, "pte")
        edge = exir.to_edge_transform_and_lower(program, partitioner=[partitioner.XnnpackPartitioner()])
        delegation = _delegation_report(edge)
        if delegation["non_delegated_compute_nodes"]:
            notes.append(f"ops outside the XNNPACK delegate run on portable kernels: {delegation['non_delegated_ops']}")
        buffer = edge.to_executorch().buffer
        out = Path(request.out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(buffer)
        return ExportResult(tool_versions=versions, delegation=delegation, notes=notes, quantization=quant)

    def load(self, artifact: Path, manifest: Manifest, threads: int | None = None) -> ExecuTorchRunner:
        return ExecuTorchRunner(artifact, manifest, threads)


# Runners alive in this process. A loaded XNNPACK method keeps a pointer to the thread pool it was loaded
# under; resizing the pool under it (``_unsafe_reset_threadpool``) makes its next run hang, so the pool is
# only resized while no runner is alive.
_LIVE: weakref.WeakSet = weakref.WeakSet()


def thread_count() -> int:
    """Size of ExecuTorch's process-wide thread pool (used by XNNPACK); -1 if the runtime cannot say."""
    portable = _require("executorch.extension.pybindings.portable_lib", "running .pte artifacts")
    count = getattr(portable, "_threadpool_get_thread_count", None)
    return int(count()) if count is not None else -1


def set_threads(threads: int | None) -> int:
    """Resize ExecuTorch's thread pool to ``threads`` (None: leave it) and return the size in use.

    Refused while another ``.pte`` runner is alive with a different size (its program would hang).
    """
    current = thread_count()
    if threads is None or int(threads) == current:
        return current
    if int(threads) < 1:
        raise EdgevitError(f"threads must be >= 1, got {threads}")
    if len(_LIVE):
        gc.collect()  # runners dropped but not yet collected do not count
    if len(_LIVE):
        raise EdgevitError(f"cannot run .pte programs with {threads} threads while {len(_LIVE)} other .pte "
                           f"runner(s) with {current} threads are loaded in this process; release them first "
                           "(ExecuTorch has one process-wide thread pool)")
    portable = _require("executorch.extension.pybindings.portable_lib", "running .pte artifacts")
    reset = getattr(portable, "_unsafe_reset_threadpool", None)
    if reset is None:
        return current
    reset(int(threads))
    return thread_count()


class ExecuTorchRunner(CheckedRunner):
    """Runs a ``.pte`` through ``executorch.runtime``.

    ``threads`` (argument): thread pool size to use, None to keep the process's current one (ExecuTorch's
    default is one thread per core). ``self.threads``: the size actually in use, read back from the runtime.
    """

    def __init__(self, artifact: Path, manifest: Manifest, threads: int | None = None):
        runtime = _require("executorch.runtime", "running .pte artifacts")
        start = time.perf_counter()
        self.threads = set_threads(threads)
        try:
            program = runtime.Runtime.get().load_program(str(artifact))
            self._method = program.load_method("forward")
        except (RuntimeError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EdgevitError(f"{artifact}: ExecuTorch cannot load this program ({first}); re-export it") from None
        self._program = program  # the method borrows from the program: keep it alive
        super().__init__(manifest, Path(artifact), time.perf_counter() - start)
        _LIVE.add(self)

    def _run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        # The bindings copy tensors with torch ops; with torch's OpenMP pool at >1 thread those copies wake
        # its workers, which then spin next to XNNPACK's threads (measured: int8 B0 512x1024 40 -> 27 ms on
        # 2 cores). One torch thread for the duration of the call avoids that; restoring costs < 1 us.
        torch_threads = torch.get_num_threads()
        if torch_threads != 1:
            torch.set_num_threads(1)
        try:
            outputs = self._method.execute([torch.from_numpy(x) for x in xs])
            return [y.detach().numpy().copy() for y in outputs]
        finally:
            if torch_threads != 1:
                torch.set_num_threads(torch_threads)
