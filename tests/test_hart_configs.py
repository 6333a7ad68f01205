"""HART config registry."""

import pytest

from edgevit.errors import UnknownKeyError
from edgevit.hart import HartModel, describe, get_config, list_configs


def test_unknown_config_suggests_close_names():
    with pytest.raises(UnknownKeyError, match="did you mean 'hart-student-phone'"):
        get_config("hart-student-phon")


@pytest.mark.parametrize("name", list_configs())
def test_every_config_builds_with_matching_latent_grid(name):
    cfg = get_config(name)
    model = HartModel(cfg)
    assert cfg.image_size // cfg.tokenizer.downsample == cfg.tokenizer.patch_nums[-1]
    assert model.transformer.seq_len == 1 + sum(p * p for p in cfg.tokenizer.patch_nums[1:])


def test_students_are_at_most_a_quarter_of_the_teacher():
    def n(name):
        return sum(p.numel() for p in HartModel(get_config(name)).transformer.parameters())

    teacher = n("hart-teacher-small")
    for student in ("hart-student-phone", "hart-student-watch"):
        assert n(student) * 4 <= teacher
        assert get_config(student).tokenizer == get_config("hart-teacher-small").tokenizer


def test_describe_reports_params_and_macs():
    d = describe("hart-tiny")
    assert d["params_transformer"] > 0 and d["macs_transformer"] > 0
    assert d["macs_total"] == d["macs_transformer"] + d["macs_diffusion"] + d["macs_decoder"]


@pytest.mark.parametrize("name", list_configs())
def test_contract_matches_the_model(name):
    from edgevit.hart.contract import GenContract

    cfg = get_config(name)
    c = GenContract.from_config(cfg)
    d = c.to_dict()
    assert d["task"] == "image-generation" and d["kv_capacity"] == HartModel(cfg).transformer.seq_len
    cache = d["programs"]["step"]["inputs"][-1]["shape"]
    assert tuple(cache[-2:]) == (c.kv_capacity, cfg.transformer.embed_dim // cfg.transformer.num_heads)


def test_class_grid_png(tmp_path):
    import numpy as np

    from edgevit.io import read_image
    from edgevit.hart.samples import write_class_grid

    model = HartModel(get_config("hart-tiny")).eval()
    path = write_class_grid(model, tmp_path / "grid.png", per_class=2, classes=[0, 1, 2])
    grid = read_image(path)
    assert grid.shape == (3 * 18 + 2, 2 * 18 + 2, 3) and grid.dtype == np.uint8
