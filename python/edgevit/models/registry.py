"""The model registry (timm style): ``list_models``, ``create_model``, ``@register_model``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from ..registry import Registry
from .checkpoint import KeyMap, load_weights
from .contract import SegContract


@dataclass(frozen=True)
class ModelEntry:
    """One registered model id: how to build it, its I/O contract and how upstream keys map onto ours."""

    id: str
    family: str
    build: Callable[[int], nn.Module]  # num_classes -> module with random init
    contract: SegContract
    key_map: KeyMap


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(model_id: str, *, family: str, contract: SegContract, key_map: KeyMap):
    """Decorator: register ``fn(num_classes) -> nn.Module`` under ``model_id``."""

    def deco(fn: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        MODELS.add(model_id, ModelEntry(model_id, family, fn, contract, key_map))
        return fn

    return deco


def list_models(pattern: str = "*") -> list[str]:
    """Registered model ids matching a shell-style pattern, sorted."""
    _load_families()
    return MODELS.names(pattern)


def get_model_entry(model_id: str) -> ModelEntry:
    """The registry entry of ``model_id``; unknown ids raise with close matches."""
    _load_families()
    return MODELS.get(model_id)


def create_model(
    model_id: str, weights: str | Path | None = None, labelset: str | None = None
) -> nn.Module:
    """Build ``model_id`` in eval mode, randomly initialised or loaded strictly from ``weights``.

    ``weights`` is an upstream checkpoint file, unchanged: a torch file holding ``state_dict`` or a bare
    state dict (loaded with ``weights_only=True``), or a safetensors file. ``labelset`` swaps the class
    set (and classifier width) for fine-tuning on another dataset, e.g. ``"voc"``.
    The returned module carries ``model_id`` and ``contract`` attributes.
    """
    entry = get_model_entry(model_id)
    contract = entry.contract if labelset is None else replace(entry.contract, labelset_name=labelset)
    model = entry.build(contract.num_classes)
    if weights is not None:
        load_weights(model, weights, entry.key_map)
    model.model_id = model_id
    model.contract = contract
    return model.eval()


def _load_families() -> None:
    """Import the family modules so their ``@register_model`` calls run (once)."""
    from . import efficientvit_seg  # noqa: F401
