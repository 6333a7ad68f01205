"""The ReLU linear attention of LiteMLA as export-friendly 3-D ``bmm`` products (one function, shared by the
window attention of :mod:`edgevit.models.efficientvit_sr` and :class:`edgevit.lowering.rewrite.BmmLiteMLA`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bmm_relu_linear_attention(t: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """t: G×3d×N (per group, e.g. batch·heads[·windows]: Q, K, V stacked along dim 1, ``d = dim``, N tokens)
    → float32 G×d×N with, per group and φ = ReLU::

        out_n = Σ_m v_m (φ(k_m)ᵀ φ(q_n)) / max(Σ_m φ(k_m)ᵀ φ(q_n), eps)

    The normaliser comes from a row of ones appended to V (no ``sum``, which XNNPACK does not take); the
    product order is ``([V; 1] Kᵀ) Q`` when N > d, else ``[V; 1] (Kᵀ Q)`` (upstream's choice), in float32.
    """
    t = t.float()
    d, n = dim, t.shape[-1]
    q, k, v = F.relu(t[:, :d]), F.relu(t[:, d : 2 * d]), t[:, 2 * d :]
    v1 = F.pad(v, (0, 0, 0, 1), value=1.0)  # [V; 1]: G×(d+1)×N
    if n > d:
        out = torch.bmm(torch.bmm(v1, k.transpose(1, 2)), q)
    else:
        out = torch.bmm(v1, torch.bmm(k.transpose(1, 2), q))
    # max(den, eps) rather than den + eps: den >= 0, so the two differ by at most eps (1e-15), but the ONNX
    # exporter's optimizer folds "+ 1e-15" away as a no-op and 0/0 (all ReLU queries zero) then gives NaN.
    return out[:, :d] / out[:, d:].clamp_min(eps)
