"""The model registry (timm style): ``list_models``, ``create_model``, ``@register_model``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import EdgevitError
from ..registry import Registry
from .checkpoint import KeyMap, load_weights
from .contract import SegContract


# Family modules under edgevit.models whose ``@register_model`` calls fill the registry (imported once).
FAMILIES = ("efficientvit_seg", "efficientvit_sam", "efficientvit_sr", "fsrcnn")


@dataclass(frozen=True)
class ModelEntry:
    """One registered model id: how to build it, its I/O contract and how upstream keys map onto ours.

    ``contract`` is the family's contract object (e.g. :class:`SegContract`): it has a ``task`` string
    and ``to_dict()`` for manifests.
    """

    id: str
    family: str
    build: Callable[[Any], nn.Module]  # contract -> module with random init
    contract: Any
    key_map: KeyMap


MODELS: Registry[ModelEntry] = Registry("model")


def _no_args(contract: Any) -> tuple:
    return ()


def register_model(model_id: str, *, family: str, contract: Any, key_map: KeyMap,
                   args: Callable[[Any], tuple] = _no_args):
    """Decorator: register ``fn(*args(contract)) -> nn.Module`` under ``model_id``.

    ``args`` maps the (possibly caller-modified) contract to the variant function's arguments, e.g.
    segmentation passes the class count of the chosen label set.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.add(model_id, ModelEntry(model_id, family, lambda c: fn(*args(c)), contract, key_map))
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
    if labelset is not None and not isinstance(entry.contract, SegContract):
        raise EdgevitError(f"{model_id}: labelset applies to segmentation models only; drop it")
    contract = entry.contract if labelset is None else replace(entry.contract, labelset_name=labelset)
    model = entry.build(contract)
    model.model_id = model_id  # before loading, so mismatch errors name the id
    if weights is not None:
        load_weights(model, weights, entry.key_map)
    model.contract = contract
    return model.eval()


def _load_families() -> None:
    """Import the family modules so their ``@register_model`` calls run (once)."""
    for name in FAMILIES:
        importlib.import_module(f"{__package__}.{name}")
