"""Model cards: ``models/<id>.yaml`` at the repository root, data only, checked against a small schema."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import EdgevitError

# key -> type. Every card has COMMON; upstream releases add UPSTREAM, models trained here add TRAINED.
COMMON: dict[str, type | tuple[type, ...]] = {
    "id": str, "family": str, "origin": str, "task": str, "title": str, "architecture": dict, "dataset": str,
    "evaluation_protocol": str, "license": str,
}
# Task-specific keys (card, published figures); a task not listed here uses the segmentation ones.
TASKS: dict[str, tuple[dict[str, type | tuple[type, ...]], dict[str, type | tuple[type, ...]]]] = {
    "semantic-segmentation": ({"num_classes": int}, {"miou": (int, float)}),
    "promptable-segmentation": ({}, {"coco_map": (int, float), "lvis_map": (int, float)}),
    "super-resolution": ({"scale": int, "macs_per_output_megapixel": str}, {}),
}
UPSTREAM = {"paper": str, "published": dict, "upstream_checkpoint": str}
TRAINED = {"training": dict}
# "design": an architecture defined here that ships without trained weights (train it with the repo's recipe).
ORIGINS = {"upstream": UPSTREAM, "edgevit": TRAINED, "design": {}}
PUBLISHED_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "resolution": str, "params": str, "macs": str, "source": str,
}
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)([KMGT])$")
_SCALE = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def cards_dir() -> Path:
    """``$EDGEVIT_CARDS`` or the repository's ``models/`` folder."""
    env = os.environ.get("EDGEVIT_CARDS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "models"


def bundled_weights(model_id: str) -> Path:
    """Where the repo keeps the checkpoint of a model trained here: ``models/weights/<id>.safetensors``."""
    return cards_dir() / "weights" / f"{model_id}.safetensors"


def parse_quantity(text: str) -> tuple[float, float]:
    """"4.8M" -> (4.8e6, 1e5): the value and the resolution of its last printed digit."""
    m = _QUANTITY.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a quantity like '4.8M' or '25G'")
    digits, unit = m.groups()
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return float(digits) * _SCALE[unit], 10.0**-decimals * _SCALE[unit]


def validate_card(card: dict[str, Any], source: str) -> None:
    """Raise :class:`EdgevitError` naming ``source`` if ``card`` breaks the schema."""

    def check(obj: dict[str, Any], schema: dict, where: str) -> None:
        missing = [k for k in schema if k not in obj]
        extra = [k for k in obj if k not in schema]
        wrong = [f"{k} should be {getattr(t, '__name__', t)}" for k, t in schema.items()
                 if k in obj and not isinstance(obj[k], t)]
        if missing or extra or wrong:
            raise EdgevitError(f"{source}: invalid card{where}: missing {missing}, unknown {extra}, {wrong}")

    if not isinstance(card, dict):
        raise EdgevitError(f"{source}: a model card must be a YAML mapping")
    if card.get("origin") not in ORIGINS:
        raise EdgevitError(f"{source}: invalid card: origin must be one of {sorted(ORIGINS)}")
    task_keys, task_published = TASKS.get(card.get("task"), TASKS["semantic-segmentation"])
    check(card, COMMON | task_keys | ORIGINS[card["origin"]], "")
    if card["origin"] != "upstream":
        return
    check(card["published"], PUBLISHED_SCHEMA | task_published, " (published)")
    for key in ("params", "macs"):
        try:
            parse_quantity(card["published"][key])
        except ValueError as exc:
            raise EdgevitError(f"{source}: published.{key}: {exc}") from None
    if not re.fullmatch(r"\d+x\d+", card["published"]["resolution"]):
        raise EdgevitError(f"{source}: published.resolution must look like 512x512")


def load_card(model_id: str) -> dict[str, Any]:
    """The validated card of ``model_id``."""
    path = cards_dir() / f"{model_id}.yaml"
    if not path.is_file():
        raise EdgevitError(f"{path}: no model card for {model_id}; set EDGEVIT_CARDS to the repo's models/ folder")
    try:
        card = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EdgevitError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    validate_card(card, str(path))
    if card["id"] != model_id:
        raise EdgevitError(f"{path}: card id {card['id']!r} does not match its file name")
    return card
