"""SAM processing, predictor prompt rules and the interactive evaluation protocol."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import edgevit
from edgevit import io, processing
from edgevit.errors import EdgevitError
from edgevit.models.efficientvit_sam import SamContract, build
from edgevit.models.layers import LargeBackboneCfg
from edgevit.sam import Predictor
from edgevit.sam.evaluate import box_from_mask, first_click, iou_ignore, next_click, open_sam_dataset

GRABCUT = "sam/grabcut50"


# --- processing --------------------------------------------------------------------------------
def test_longest_side_shape_rounds_like_upstream():
    assert processing.longest_side_shape(321, 481, 1024) == (683, 1024)
    assert processing.longest_side_shape(481, 321, 512) == (512, 342)  # int(341.69 + 0.5)
    assert processing.longest_side_shape(500, 500, 1024) == (1024, 1024)


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BICUBIC))


@pytest.mark.parametrize("size", [(120, 90), (342, 512), (700, 1024)])
def test_image_resize_matches_pil_bilinear(size):
    image = _smooth_image(241, 321)
    ours = processing.resize_bilinear_antialias(image, size)
    pil = np.array(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
    diff = np.abs(ours.astype(int) - pil)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # PIL's fixed point rounds a few pixels the other way


def test_sam_input_normalises_and_pads_bottom_right():
    image = _smooth_image(100, 60)
    x, (h, w) = processing.sam_image_to_input(image, 512)
    assert x.shape == (1, 3, 512, 512) and x.dtype == np.float32 and (h, w) == (512, 307)
    assert not x[0, :, :, w:].any()
    resized = processing.resize_bilinear_antialias(image, (h, w))
    np.testing.assert_allclose(x[0, :, 7, 9], (resized[7, 9] - np.array(processing.SAM_MEAN)) / processing.SAM_STD,
                               rtol=1e-5)


def test_coords_map_to_the_1024_frame():
    out = processing.sam_transform_coords(np.array([[481.0, 321.0], [0.0, 0.0]]), (321, 481))
    np.testing.assert_allclose(out, [[1024, 683], [0, 0]])


def test_mask_postprocess_equals_upstream_two_step_bilinear():
    low = np.random.default_rng(0).normal(size=(3, 256, 256)).astype(np.float32)
    ours = processing.sam_postprocess_masks(low, (321, 481))
    t = F.interpolate(torch.from_numpy(low)[None], (1024, 1024), mode="bilinear", align_corners=False)
    t = F.interpolate(t[..., :683, :1024], (321, 481), mode="bilinear", align_corners=False)[0].numpy()
    assert ours.shape == (3, 321, 481)
    np.testing.assert_allclose(ours, t, atol=1e-4)


# --- predictor prompt rules (numpy runners, no network) -----------------------------------------
@pytest.fixture()
def fake_predictor():
    calls = []

    def decode(emb, coords, labels, mask, flag):
        calls.append((coords, labels, mask, flag))
        return np.zeros((1, 4, 256, 256), np.float32), np.arange(4, dtype=np.float32)[None]

    p = Predictor((lambda x: np.zeros((1, 256, 64, 64), np.float32), decode), contract=SamContract(512))
    p.set_image(np.zeros((300, 400, 3), np.uint8))
    p.calls = calls
    return p


def test_predictor_pads_prompt_slots_and_clips_the_box(fake_predictor):
    masks, scores, low = fake_predictor.predict(points=[[100, 150]], labels=[1], box=[-50, 10, 200, 400])
    assert masks.shape == (3, 300, 400) and masks.dtype == bool and low.shape == (3, 256, 256)
    np.testing.assert_array_equal(scores, [1, 2, 3])
    coords, labels, _, flag = fake_predictor.calls[-1]
    assert coords.shape == (1, 16, 2) and labels.shape == (1, 16) and flag[0] == 0
    np.testing.assert_array_equal(labels[0, :3], [1, 2, 3])
    assert (labels[0, 3:] == -1).all()
    np.testing.assert_allclose(coords[0, :3], np.array([[100, 150], [0, 10], [200, 300]]) * (1024 / 400))
    fake_predictor.predict(points=[[1, 2]], labels=[0], mask_input=np.ones((1, 256, 256)), multimask=False)
    assert fake_predictor.calls[-1][3][0] == 1 and fake_predictor.calls[-1][2].sum() == 256 * 256


@pytest.mark.parametrize("kwargs,needle", [
    ({}, "at least one point or a box"),
    ({"points": [[401, 10]], "labels": [1]}, "outside the 400x300 image"),
    ({"points": [[0.5, 0.5]], "labels": [2]}, "must be 1 \\(foreground\\) or 0"),
    ({"points": [[1, 1], [2, 2]], "labels": [1]}, "need as many labels"),
    ({"box": [500, 400, 600, 500]}, "lies outside"),
    ({"box": [50, 50, 10, 60]}, "x1 > x0"),
    ({"points": np.ones((16, 2)), "labels": np.ones(16)}, "need 17 prompt slots; the decoder takes 16"),
    ({"points": np.ones((15, 2)), "labels": np.ones(15), "box": [0, 0, 5, 5]}, "need 17 prompt slots"),
    ({"points": [[1, 1]], "labels": [1], "mask_input": np.zeros((64, 64))}, "256x256 low-res logits"),
])
def test_bad_prompts_raise_clear_errors(fake_predictor, kwargs, needle):
    with pytest.raises(EdgevitError, match=needle):
        fake_predictor.predict(**kwargs)


def test_predict_before_set_image_raises():
    p = Predictor((lambda x: x, lambda *a: a), contract=SamContract(512))
    with pytest.raises(EdgevitError, match="set_image"):
        p.predict(points=[[1, 1]], labels=[1])


# --- click protocol on constructed masks --------------------------------------------------------
def test_first_click_is_the_deepest_object_pixel():
    fg = np.zeros((40, 60), bool)
    fg[5:25, 10:50] = True  # 20 x 40 rectangle: a ridge of depth 10 on rows 14-15, columns 19-40
    assert first_click(fg) == (19, 14)  # the first of them in row-major order
    assert box_from_mask(fg) == (10, 5, 50, 25)


def test_next_click_goes_to_the_largest_error_region_by_area():
    gt = np.zeros((80, 80), bool)
    gt[5:8, 5:75] = True  # thin strip, area 210
    gt[40:52, 40:52] = True  # thick square, area 144 (deeper but smaller)
    pred = np.zeros_like(gt)
    valid = np.ones_like(gt)
    (x, y), label = next_click(pred, gt, valid)
    assert label == 1 and y == 6 and 5 <= x < 75
    # A false positive bigger than every miss gets a negative click at its centre.
    pred = gt.copy()
    pred[60:75, 5:20] = True
    assert next_click(pred, gt, valid) == ((12, 67), 0)


def test_next_click_ignores_uncertain_pixels_and_stops_when_exact():
    gt = np.zeros((30, 30), bool)
    gt[10:20, 10:20] = True
    valid = np.ones_like(gt)
    assert next_click(gt.copy(), gt, valid) is None
    valid[10:20, 10:20] = False  # the whole miss is uncertain
    assert next_click(np.zeros_like(gt), gt, valid) is None


def test_iou_ignores_uncertain_pixels():
    gt = np.zeros((10, 10), bool)
    gt[2:6, 2:6] = True  # 16 px
    pred = np.zeros_like(gt)
    pred[2:6, 4:8] = True  # 16 px, 8 shared
    valid = np.ones_like(gt)
    assert iou_ignore(pred, gt, valid) == pytest.approx(8 / 24)
    valid[:, 6:8] = False  # the 8 false-positive pixels are uncertain
    assert iou_ignore(pred, gt, valid) == pytest.approx(8 / 16)
    assert iou_ignore(np.zeros_like(gt), np.zeros_like(gt), valid) == 1.0


# --- real files ---------------------------------------------------------------------------------
def test_grabcut_prompts_match_our_derivation_from_the_masks(shared_data):
    items = open_sam_dataset(shared_data / GRABCUT)
    assert len(items) == 50
    for inst in items:
        fg = io.read_label(inst.mask) == inst.fg_value
        assert box_from_mask(fg) == tuple(inst.box), inst.name
        assert first_click(fg) == tuple(inst.first_click), inst.name


@pytest.fixture(scope="module")
def l0():
    """A random-weight EfficientViT-SAM with a tiny backbone (the real prompt decoder): the pipeline, fast."""
    torch.manual_seed(0)
    cfg = LargeBackboneCfg((8, 16, 16, 32, 32), (0, 0, 0, 1, 1))
    model = build(cfg, (("stage4", "stage3", "stage2"), (32, 32, 16)), 1, 1).eval()
    model.contract = SamContract(512)
    return model


def test_eval_pipeline_on_real_grabcut_files(shared_data, l0, tmp_path):
    result = edgevit.evaluate_sam(l0, shared_data / GRABCUT, limit=2, out=tmp_path, progress=False)
    assert list(result.per_instance) == ["106024", "124080"]
    for scores in result.per_instance.values():
        assert set(scores) == {"box", "click1", "click3", "click5"} and all(0 <= v <= 1 for v in scores.values())
    saved = json.loads((tmp_path / "eval_sam.json").read_text())
    assert saved["instances"] == 2 and set(saved["miou"]) == {"box", "click1", "click3", "click5"}
    assert "| click5 |" in (tmp_path / "eval_sam.md").read_text()


def test_instances_layout_derives_the_grabcut_prompts(shared_data, l0, tmp_path):
    src = shared_data / GRABCUT
    record = json.loads((src / "prompts.json").read_text())[1]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks" / "124080").mkdir(parents=True)
    shutil.copy(src / record["image"], tmp_path / "images" / "124080.jpg")
    shutil.copy(src / record["mask"], tmp_path / "masks" / "124080" / "0.png")
    [inst] = open_sam_dataset(tmp_path)
    assert inst.name == "124080/0" and inst.box == tuple(record["box_xyxy"])
    assert inst.first_click == tuple(record["first_click_xy"])
    result = edgevit.evaluate_sam(Predictor(l0), tmp_path, prompts=("click2",), progress=False)
    assert 0 <= result.miou["click2"] <= 1


def test_unknown_protocol_and_layout_are_refused(tmp_path):
    with pytest.raises(EdgevitError, match="unknown prompt protocol"):
        edgevit.evaluate_sam("efficientvit-sam-l0", tmp_path, prompts=("click0",))
    with pytest.raises(EdgevitError, match="expected prompts.json"):
        edgevit.evaluate_sam("efficientvit-sam-l0", tmp_path)
