"""Reading upstream checkpoint files unchanged and loading them strictly.

Accepted files (recognised by content, not by name): a torch zip/pickle file holding a ``state_dict``
(or ``model``) entry or a bare state dict, loaded with ``weights_only=True`` so arbitrary pickles are
refused; or a safetensors file. Keys are translated by the model's declared :class:`KeyMap`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import EdgevitError

_OPTIONAL_SUFFIXES = ("num_batches_tracked",)  # BatchNorm counters: not needed for inference


@dataclass(frozen=True)
class KeyMap:
    """Ordered ``(regex, replacement)`` rules that turn upstream parameter names into ours."""

    rules: tuple[tuple[str, str], ...] = ()

    def __call__(self, key: str) -> str:
        for pattern, repl in self.rules:
            key = re.sub(pattern, repl, key)
        return key


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``name -> tensor`` dict (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise EdgevitError(f"{path}: checkpoint file not found; pass the path of an upstream .pt or .safetensors file")
    with path.open("rb") as f:
        head = f.read(16)
    if _looks_like_safetensors(head):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise EdgevitError(f"{path}: corrupted safetensors file ({_first_line(exc)}); re-download it") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types; classify by message
        msg = _first_line(exc)
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "Unsupported operand" in str(exc):
            raise EdgevitError(
                f"{path}: refused to unpickle: the file holds Python objects beyond tensors ({msg}); "
                "only plain state dicts are loaded"
            ) from None
        raise EdgevitError(f"{path}: not a readable checkpoint ({msg}); re-download or re-save it") from None
    return _find_state_dict(obj, path)


def _looks_like_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length followed by a JSON object.
    return len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 32


def _find_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            return tensors
    raise EdgevitError(f"{path}: no state dict found (expected a dict of tensors, or one under 'state_dict')")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _summary(label: str, items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit]) + (f", ... and {len(items) - limit} more" if len(items) > limit else "")
    return f"{len(items)} {label} ({shown})"


def load_weights(model: nn.Module, path: str | Path, key_map: KeyMap = KeyMap()) -> None:
    """Load ``path`` into ``model`` strictly: every model tensor present with its exact shape, nothing extra.

    Raises :class:`EdgevitError` naming the file and listing missing, unexpected and mis-shaped keys.
    """
    ckpt = {key_map(k): v for k, v in read_state_dict(path).items()}
    own = model.state_dict()
    missing = [k for k in own if k not in ckpt and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in ckpt if k not in own]
    mismatched = [
        f"{k}: file {tuple(ckpt[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in ckpt and ckpt[k].shape != v.shape
    ]
    problems = [
        _summary(label, items)
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched))
        if items
    ]
    if problems:
        model_id = getattr(model, "model_id", type(model).__name__)
        raise EdgevitError(
            f"{path}: does not match {model_id}: " + "; ".join(problems)
            + " — is it a checkpoint of another variant?"
        )
    with torch.no_grad():
        for k, v in own.items():
            if k in ckpt:
                v.copy_(ckpt[k].to(v.dtype))
