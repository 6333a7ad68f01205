"""Model cards in models/*.yaml: one per registered id, schema-checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import edgevit
from edgevit.cards import cards_dir, load_card, parse_quantity, validate_card
from edgevit.errors import EdgevitError
from edgevit.models import get_model_entry


def test_one_card_per_model_and_no_orphans():
    files = sorted(p.stem for p in cards_dir().glob("*.yaml"))
    assert files == edgevit.list_models()


@pytest.mark.parametrize("model_id", edgevit.list_models())
def test_card_is_valid_and_consistent_with_contract(model_id):
    card = load_card(model_id)
    contract = get_model_entry(model_id).contract
    assert card["task"] == contract.task
    if contract.task == "semantic-segmentation":
        assert card["num_classes"] == contract.num_classes
        assert card["dataset"] == contract.labelset_name
    if card["origin"] == "upstream":
        assert card["published"]["resolution"] == "x".join(map(str, contract.eval_size))
        scores = [v for k, v in card["published"].items() if k in ("miou", "coco_map", "lvis_map")]
        assert scores and all(0 < v < 100 for v in scores)
    elif card["origin"] == "edgevit":
        assert {"summary", "command", "weights", "measured"} <= set(card["training"])
    if contract.task == "super-resolution":
        assert card["scale"] == contract.scale


def test_parse_quantity():
    assert parse_quantity("4.8M") == (4.8e6, 1e5)
    assert parse_quantity("396G") == (396e9, 1e9)
    with pytest.raises(ValueError):
        parse_quantity("4.8 million")


def _card() -> dict:
    return yaml.safe_load((cards_dir() / "efficientvit-seg-b0-cityscapes.yaml").read_text())


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c.pop("license"), "missing ['license']"),
    (lambda c: c.update(colour="red"), "unknown ['colour']"),
    (lambda c: c.update(origin="elsewhere"), "origin must be one of"),
    (lambda c: c.pop("published"), "missing ['published']"),
    (lambda c: c.update(num_classes="19"), "num_classes should be int"),
    (lambda c: c["published"].pop("miou"), "missing ['miou']"),
    (lambda c: c["published"].update(macs="lots"), "published.macs"),
    (lambda c: c["published"].update(resolution="1024*2048"), "published.resolution"),
])
def test_schema_violations_are_reported(mutate, needle):
    card = _card()
    mutate(card)
    with pytest.raises(EdgevitError) as err:
        validate_card(card, "x.yaml")
    assert needle in str(err.value) and str(err.value).startswith("x.yaml: ")


def test_card_with_wrong_id_or_missing_file(tmp_path, monkeypatch):
    card = _card()
    monkeypatch.setenv("EDGEVIT_CARDS", str(tmp_path))
    with pytest.raises(EdgevitError, match="no model card"):
        load_card("efficientvit-seg-b0-cityscapes")
    card["id"] = "efficientvit-seg-b1-cityscapes"
    Path(tmp_path / "efficientvit-seg-b0-cityscapes.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(EdgevitError, match="does not match its file name"):
        load_card("efficientvit-seg-b0-cityscapes")
