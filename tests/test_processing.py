"""edgevit.processing against PyTorch / OpenCV and hand-computed arrays."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgevit import processing as P
from edgevit.errors import EdgevitError


def torch_bicubic(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PyTorch's bicubic resize of the last two axes of a C×H×W (or N×C×H×W) array."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    squeeze = t.ndim == 3
    t = t[None] if squeeze else t
    out = F.interpolate(t, size=size, mode="bicubic", align_corners=False).numpy()
    return out[0] if squeeze else out


def smooth_image(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = [127.5 + 120 * np.sin(x / 23 + c) * np.cos(y / 17 - c) for c in range(3)]
    return np.clip(np.rint(np.stack(chans, axis=-1)), 0, 255).astype(np.uint8)


# --- bicubic resize ----------------------------------------------------------------------------

RESIZES = [
    (8, 9, 16, 18),  # x2
    (5, 7, 40, 56),  # x8
    (7, 9, 13, 20),  # non-integer upscale
    (37, 41, 13, 17),  # non-integer downscale
    (100, 80, 33, 61),  # non-integer downscale, different ratios
    (10, 4, 3, 9),  # down in H, up in W
    (1, 1, 4, 5),  # tiny
    (2, 3, 5, 7),  # tiny
    (6, 6, 1, 1),  # down to a single pixel
]


@pytest.mark.parametrize("h, w, oh, ow", RESIZES)
def test_float_resize_matches_torch(h, w, oh, ow):
    x = np.random.default_rng(h * 100 + w).random((2, 3, h, w), dtype=np.float32)
    y = P.resize_bicubic(x, (oh, ow), axes=(2, 3))
    assert y.dtype == np.float32 and y.shape == (2, 3, oh, ow)
    np.testing.assert_allclose(y, torch_bicubic(x, (oh, ow)), rtol=0, atol=1e-5)
    x64 = x.astype(np.float64)  # float64 in -> float32 out, vs PyTorch computing in double
    np.testing.assert_allclose(P.resize_bicubic(x64, (oh, ow), axes=(-2, -1)), torch_bicubic(x64, (oh, ow)), atol=1e-6)


def test_float_resize_non_default_axes():
    x = np.random.default_rng(1).random((7, 2, 9), dtype=np.float32)  # H × C × W
    expected = torch_bicubic(x.transpose(1, 0, 2), (12, 5)).transpose(1, 0, 2)
    np.testing.assert_allclose(P.resize_bicubic(x, (12, 5), axes=(0, 2)), expected, atol=1e-5)
    # axes=(2, 0): axis 2 is resized to size[0]; the same as resizing the transposed array
    np.testing.assert_allclose(P.resize_bicubic(x, (5, 12), axes=(2, 0)), expected, atol=1e-5)
    hwc = x.transpose(0, 2, 1)  # the default axes (0, 1) on an H×W×C array, any number of channels
    np.testing.assert_allclose(P.resize_bicubic(hwc, (12, 5)), expected.transpose(0, 2, 1), atol=1e-5)
    four_d = np.stack([x, 2 * x])  # extra leading axis carried along
    np.testing.assert_allclose(P.resize_bicubic(four_d, (12, 5), axes=(1, 3))[1], 2 * expected, atol=2e-5)


def test_taps_and_identity():
    index, weights = P.bicubic_taps(5, 5)
    assert np.array_equal(index[:, 1], np.arange(5)) and np.array_equal(weights, np.tile([0, 1, 0, 0], (5, 1)))
    index, weights = P.bicubic_taps(4, 8)  # x2: t alternates 0.75 / 0.25, first source at -0.25
    assert index[0].tolist() == [0, 0, 0, 1] and index[-1].tolist() == [2, 3, 3, 3]
    np.testing.assert_allclose(weights.sum(axis=1), 1, atol=1e-15)
    # dst 1: t = 0.25; far(1.25), near(0.25), near(0.75), far(1.75) computed by hand
    np.testing.assert_allclose(weights[1], [-0.10546875, 0.87890625, 0.26171875, -0.03515625], rtol=0, atol=1e-15)
    img = np.random.default_rng(2).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    assert np.array_equal(P.resize_bicubic(img, (6, 7)), img)
    assert np.all(P.resize_bicubic(np.full((5, 3), 77, np.uint8), (9, 11)) == 77)


@pytest.mark.parametrize("source", ["random", "smooth"])
@pytest.mark.parametrize("size", [(1024, 2048), (512, 704), (57, 33), (97, 131)])
def test_uint8_resize_within_one_lsb_of_opencv(source, size):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8) if source == "random" else smooth_image(375, 500)
    ours = P.resize_bicubic(img, size)
    cv = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    assert ours.dtype == np.uint8 and ours.shape == cv.shape
    diff = np.abs(ours.astype(np.int16) - cv)
    assert diff.max() <= 1
    assert (diff == 0).mean() >= 0.99


def test_uint8_resize_rounds_and_clips():
    img = np.zeros((4, 4), np.uint8)
    img[:, 2:] = 255  # a step overshoots both ways with a = -0.75
    out = P.resize_bicubic(img, (4, 16))
    exact = P.resize_bicubic(img.astype(np.float64), (4, 16)).astype(np.float64)
    assert exact.min() < 0 and exact.max() > 255
    assert np.array_equal(out, np.clip(np.rint(exact), 0, 255).astype(np.uint8))


# --- resize policies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h, w, policy, expected",
    [
        (512, 683, P.ADE20K, (512, 704)),  # ceil(683 / 512 * 16) = ceil(21.34) = 22 -> 704
        (683, 512, P.ADE20K, (704, 512)),  # portrait
        (375, 500, P.ADE20K, (512, 704)),  # ceil(21.33) = 22
        (512, 704, P.ADE20K, (512, 704)),  # already a multiple: unchanged
        (512, 512, P.ADE20K, (512, 512)),  # square
        (300, 300, P.ShortSide(500, 32), (512, 500)),  # square takes the else branch: width = short
        (1000, 1, P.ShortSide(8, 4), (8000, 8)),
        (1024, 2048, P.CITYSCAPES, (1024, 2048)),
        (480, 640, P.CITYSCAPES, (1024, 2048)),
        (640, 480, P.FixedSize(10, 20), (10, 20)),
    ],
)
def test_target_size(h, w, policy, expected):
    assert P.target_size(h, w, policy) == expected


def test_short_side_float_rule_equals_integer_ceil_for_ade():
    """Upstream's float expression never rounds across an integer for the ADE policy (h, w <= 1200)."""
    for h in range(1, 1201):
        w = np.arange(h + 1, 1201)
        integer = -(-w * 512 // (h * 32)) * 32
        assert [P.target_size(h, int(v), P.ADE20K)[1] for v in w] == integer.tolist()


# --- model input -------------------------------------------------------------------------------


def test_normalize_bit_exact_vs_torch():
    img = np.random.default_rng(4).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    img[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]
    for mean, std in [(P.IMAGENET_MEAN, P.IMAGENET_STD), ((0.5, 0.25, 0.1), (0.3, 0.7, 1.9))]:
        t = torch.from_numpy(img).permute(2, 0, 1).float() / 255
        t = (t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        out = P.normalize(img, mean, std)
        assert out.dtype == np.float32 and out.shape == img.shape
        assert np.array_equal(out, t.permute(1, 2, 0).numpy())


def test_image_to_input():
    img = smooth_image(375, 500)
    x = P.image_to_input(img, P.ADE20K)
    assert x.shape == (1, 3, 512, 704) and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.array_equal(x[0].transpose(1, 2, 0), P.normalize(P.resize_bicubic(img, (512, 704))))
    # upstream's cv2 path differs by at most one uint8 step
    cv = P.normalize(cv2.resize(img, (704, 512), interpolation=cv2.INTER_CUBIC))
    assert np.abs(x[0].transpose(1, 2, 0) - cv).max() <= 1 / 255 / min(P.IMAGENET_STD) + 1e-6
    same = smooth_image(512, 704)  # already the target size: no resize
    assert np.array_equal(P.image_to_input(same, P.ADE20K)[0], P.normalize(same).transpose(2, 0, 1))
    custom = P.image_to_input(same, P.FixedSize(16, 8), mean=(0, 0, 0), std=(1, 1, 1))
    assert custom.shape == (1, 3, 16, 8) and 0 <= custom.min() and custom.max() <= 1


# --- logits -> labels --------------------------------------------------------------------------


@pytest.mark.parametrize("c, h, w, size", [(19, 16, 24, (128, 192)), (150, 64, 86, (512, 683)), (7, 20, 30, (13, 17))])
def test_logits_to_labels_matches_torch(c, h, w, size):
    logits = np.random.default_rng(c).standard_normal((c, h, w), dtype=np.float32)
    labels = P.logits_to_labels(logits, size)
    expected = torch_bicubic(logits, size).argmax(axis=0)
    assert labels.dtype == np.uint8 and labels.shape == size
    assert (labels == expected).mean() >= 0.999


def test_logits_to_labels_dtype_ties_and_identity():
    logits = np.zeros((300, 2, 3), np.float32)
    logits[299, 0, 0] = logits[256, 1, 2] = 5
    labels = P.logits_to_labels(logits, (2, 3))  # no resize: plain argmax
    assert labels.dtype == np.uint16 and labels.tolist() == [[299, 0, 0], [0, 0, 256]]
    assert P.logits_to_labels(np.ones((255, 4, 4), np.float32), (8, 8)).dtype == np.uint8
    logits = np.random.default_rng(6).standard_normal((4, 5, 6), dtype=np.float32)
    assert np.array_equal(P.logits_to_labels(logits[None], (7, 9)), P.logits_to_labels(logits, (7, 9)))  # 1×C×h×w
    tie = np.zeros((3, 2, 2), np.float32)
    tie[1:] = 1  # classes 1 and 2 tie everywhere: the first wins
    assert np.all(P.logits_to_labels(tie, (5, 3)) == 1)


def test_logits_to_labels_large_cityscapes():
    logits = np.random.default_rng(5).standard_normal((19, 128, 256), dtype=np.float32)
    labels = P.logits_to_labels(logits, (1024, 2048))
    assert labels.shape == (1024, 2048) and labels.dtype == np.uint8
    rows = slice(0, 1024, 61)  # torch on every 61st output row keeps this test fast
    expected = torch_bicubic(logits, (1024, 2048))[:, rows].argmax(axis=0)
    assert (labels[rows] == expected).mean() >= 0.999


# --- colour ------------------------------------------------------------------------------------

PALETTE = np.array([[10, 20, 30], [40, 50, 60], [200, 0, 255]], np.uint8)
LABELS = np.array([[0, 1, 255], [2, 255, 0]], np.uint8)


def test_colorize():
    out = P.colorize(LABELS, PALETTE, ignore_color=(1, 2, 3))
    expected = [[[10, 20, 30], [40, 50, 60], [1, 2, 3]], [[200, 0, 255], [1, 2, 3], [10, 20, 30]]]
    assert out.dtype == np.uint8 and out.tolist() == expected
    assert P.colorize(LABELS, PALETTE)[0, 2].tolist() == [0, 0, 0]  # default ignore colour
    assert P.colorize(LABELS.astype(np.int64) % 255, PALETTE, ignore_index=None)[0, 2].tolist() == [10, 20, 30]
    assert P.colorize(LABELS % 255, PALETTE, ignore_index=0).tolist() == [[[0, 0, 0], [40, 50, 60], [0, 0, 0]],
                                                                          [[200, 0, 255], [0, 0, 0], [0, 0, 0]]]
    with pytest.raises(EdgevitError, match="label 255 is outside the palette"):
        P.colorize(LABELS, PALETTE, ignore_index=0)


def test_overlay():
    image = np.array([[[100, 100, 100], [0, 255, 7], [9, 8, 7]], [[255, 1, 255], [5, 6, 7], [0, 0, 0]]], np.uint8)
    out = P.overlay(image, LABELS, PALETTE, alpha=128)
    # (color * 128 + img * 127 + 127) // 255, by hand: e.g. (10 * 128 + 100 * 127 + 127) // 255 = 14107 // 255 = 55
    expected = [
        [[55, 60, 65], [20, 152, 34], [9, 8, 7]],
        [[227, 0, 255], [5, 6, 7], [5, 10, 15]],  # G: (0 * 128 + 1 * 127 + 127) // 255 = 0
    ]
    assert out.dtype == np.uint8 and out.tolist() == expected
    assert np.array_equal(P.overlay(image, LABELS, PALETTE, alpha=0), image)
    full = P.overlay(image, LABELS, PALETTE, alpha=255)
    assert np.array_equal(full, np.where((LABELS == 255)[..., None], image, PALETTE[LABELS % 255 % 3]))


# --- validation --------------------------------------------------------------------------------

IMG = np.zeros((4, 5, 3), np.uint8)
LOGITS = np.zeros((3, 4, 5), np.float32)
BAD_CALLS = {
    "resize dtype": (lambda: P.resize_bicubic(IMG.astype(np.int32), (2, 2)), "dtype int32; expected uint8"),
    "resize not array": (lambda: P.resize_bicubic([[1, 2]], (2, 2)), "must be a numpy array"),
    "resize ndim": (lambda: P.resize_bicubic(np.zeros(5, np.float32), (2, 2)), "at least 2 dimensions"),
    "resize zero size": (lambda: P.resize_bicubic(IMG, (0, 2)), "height must be a positive int"),
    "resize negative size": (lambda: P.resize_bicubic(IMG, (2, -3)), "width must be a positive int"),
    "resize float size": (lambda: P.resize_bicubic(IMG, (2.5, 3)), "positive int"),
    "resize size arity": (lambda: P.resize_bicubic(IMG, (2, 3, 4)), "must be (height, width)"),
    "resize same axes": (lambda: P.resize_bicubic(IMG, (2, 2), axes=(1, 1)), "two distinct axes"),
    "resize axis range": (lambda: P.resize_bicubic(IMG, (2, 2), axes=(0, 3)), "two distinct axes"),
    "resize empty input": (lambda: P.resize_bicubic(np.zeros((0, 5), np.uint8), (2, 2)), "must be non-empty"),
    "normalize dtype": (lambda: P.normalize(IMG.astype(np.float32)), "dtype float32; expected uint8"),
    "normalize channels": (lambda: P.normalize(np.zeros((4, 5, 4), np.uint8)), "expected H×W×3"),
    "normalize ndim": (lambda: P.normalize(np.zeros((4, 5), np.uint8)), "expected 3 dimensions"),
    "normalize mean": (lambda: P.normalize(IMG, mean=(0.5, 0.5)), "mean must be 3 finite floats"),
    "normalize std": (lambda: P.normalize(IMG, std=(0.2, 0, 0.2)), "std must be 3 finite positive floats"),
    "policy type": (lambda: P.image_to_input(IMG, "ade20k"), "policy must be FixedSize or ShortSide"),
    "fixed size": (lambda: P.FixedSize(0, 5), "FixedSize height must be a positive int"),
    "short side": (lambda: P.ShortSide(short=0), "ShortSide.short must be a positive int"),
    "multiple": (lambda: P.ShortSide(multiple=-32), "ShortSide.multiple must be a positive int"),
    "target size": (lambda: P.target_size(0, 5, P.ADE20K), "image size height must be a positive int"),
    "logits dtype": (lambda: P.logits_to_labels(LOGITS.astype(np.uint8), (2, 2)), "expected float32 or float64"),
    "logits ndim": (lambda: P.logits_to_labels(LOGITS[0], (2, 2)), "expected 3 or 4 dimensions"),
    "logits batch": (lambda: P.logits_to_labels(np.stack([LOGITS] * 2), (2, 2)), "expected batch size 1"),
    "logits classes": (lambda: P.logits_to_labels(np.zeros((0, 2, 2), np.float32), (2, 2)), "expected 1 to 65536"),
    "logits size": (lambda: P.logits_to_labels(LOGITS, (3, 0)), "width must be a positive int"),
    "labels dtype": (lambda: P.colorize(LABELS.astype(np.float32), PALETTE), "expected an integer dtype"),
    "labels ndim": (lambda: P.colorize(LABELS[None], PALETTE), "expected 2 dimensions"),
    "palette dtype": (lambda: P.colorize(LABELS, PALETTE.astype(np.int64)), "palette has dtype int64"),
    "palette shape": (lambda: P.colorize(LABELS, np.zeros((3, 4), np.uint8)), "expected (C, 3)"),
    "label range": (lambda: P.colorize(LABELS % 255 + 1, PALETTE), "label 3 is outside the palette [0, 3)"),
    "negative label": (lambda: P.colorize(np.array([[0, -1]], np.int8), PALETTE), "label -1 is outside"),
    "ignore color": (lambda: P.colorize(LABELS, PALETTE, ignore_color=(300, 0, 0)), "ignore_color must be 3 ints"),
    "ignore index": (lambda: P.colorize(LABELS, PALETTE, ignore_index="x"), "ignore_index must be an int or None"),
    "alpha range": (lambda: P.overlay(IMG[:2, :3], LABELS, PALETTE, alpha=256), "alpha must be an int in [0, 255]"),
    "alpha float": (lambda: P.overlay(IMG[:2, :3], LABELS, PALETTE, alpha=0.5), "alpha must be an int"),
    "alpha bool": (lambda: P.overlay(IMG[:2, :3], LABELS, PALETTE, alpha=True), "alpha must be an int"),
    "overlay shapes": (lambda: P.overlay(IMG, LABELS, PALETTE), "differ in H×W"),
    "overlay image": (lambda: P.overlay(IMG[..., 0], LABELS, PALETTE), "overlay: image has shape"),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_validation_errors(name):
    call, message = BAD_CALLS[name]
    with pytest.raises(EdgevitError, match=re.escape(message)) as err:
        call()
    assert "\n" not in str(err.value)


# --- reference vectors -------------------------------------------------------------------------


def load_policy(spec: dict) -> P.ResizePolicy:
    fields = {k: v for k, v in spec.items() if k != "kind"}
    return {"FixedSize": P.FixedSize, "ShortSide": P.ShortSide}[spec["kind"]](**fields)


def test_reference_vectors_round_trip(tmp_path):
    paths = P.write_reference_vectors(tmp_path / "a")
    assert all(p.is_file() for p in paths) and paths[-1].name == "index.json"
    index = json.loads(paths[-1].read_text())
    assert index["bicubic_a"] == -0.75 and len(index["cases"]) >= 10
    assert {c["op"] for c in index["cases"]} == {
        "resize_bicubic", "normalize", "image_to_input", "logits_to_labels", "colorize", "overlay"
    }
    written = {p.name for p in paths}
    for case in index["cases"]:
        inputs = {k: np.load(tmp_path / "a" / f) for k, f in case["inputs"].items()}
        params = {k: load_policy(v) if k == "policy" else v for k, v in case["params"].items()}
        expected = np.load(tmp_path / "a" / case["output"])
        assert set(case["inputs"].values()) | {case["output"]} <= written
        got = getattr(P, case["op"])(**inputs, **params)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), case["name"]
        if case["op"] == "logits_to_labels":  # labels are robust to float32 ports: clear top-2 margin
            top2 = np.sort(P.resize_bicubic(inputs["logits"], params["size"], axes=(1, 2)), axis=0)[-2:]
            assert (top2[1] - top2[0]).min() >= 1e-3
    outputs = {c["name"]: np.load(tmp_path / "a" / c["output"]) for c in index["cases"]}
    assert outputs["labels_u16"].dtype == np.uint16 and outputs["labels_u16"].max() >= 256
    assert 255 in np.load(tmp_path / "a" / "colorize.labels.npy")  # the ignore label is exercised
    cv = cv2.resize(np.load(tmp_path / "a" / "resize_u8_down.x.npy"), (6, 4), interpolation=cv2.INTER_CUBIC)
    assert np.abs(outputs["resize_u8_down"].astype(int) - cv).max() <= 1
    for case in index["target_size"]:
        assert list(P.target_size(case["height"], case["width"], load_policy(case["policy"]))) == case["expected"]
    # deterministic: a second run writes byte-identical files
    again = P.write_reference_vectors(tmp_path / "b")
    assert [p.name for p in again] == [p.name for p in paths]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(paths, again))
