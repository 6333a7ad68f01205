"""Where static int8 puts its quantizers (``ExportRequest.placement``): which tensors are rounded to int8.

``weighted``: only where a tensor enters a convolution or a matmul / linear. Residual additions, multiplies
(activation functions, gates) and concatenations read float tensors, so the residual stream is never rounded.
``all``: every op the format's quantizer can quantize (onnxruntime: the inputs and outputs of each, its readers
sharing one pair; XNNPACK: conv, linear, add, mul and cat with int8 outputs), which keeps more of the graph in
int8 between kernels. Backends list theirs (``placements``) and choose a default; tasks may choose by
measurement (SAM's encoder: :func:`edgevit.sam.export.export_sam`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import EdgevitError
from ..registry import Registry


@dataclass(frozen=True)
class Placement:
    name: str
    description: str


INT8_PLACEMENTS: Registry[Placement] = Registry("int8 placement")
INT8_PLACEMENTS.add("weighted", Placement(
    "weighted", "int8 only at convolutions and matmuls / linears; residual adds, multiplies and concatenations "
    "read float tensors"))
INT8_PLACEMENTS.add("all", Placement(
    "all", "every op the quantizer can quantize (adds, multiplies, concatenations too)"))


def check_placement(precision: str, activations: str, placement: str | None, backend: str,
                    placements: tuple[str, ...]) -> None:
    """Refuse an unknown placement, one for a float precision or dynamic activations, or one ``backend`` does
    not implement (None: the backend's default, always fine)."""
    if placement is None:
        return
    INT8_PLACEMENTS.get(placement)
    if precision != "int8" or activations != "static":
        raise EdgevitError(f"int8 placement {placement!r} applies to static int8 only (precision {precision!r}, "
                           f"activations {activations!r})")
    if placement not in placements:
        raise EdgevitError(f"{backend}: int8 placement {placement!r} is not implemented for this format (it takes "
                           f"{', '.join(placements)}); drop --placement or export pte / onnx")
