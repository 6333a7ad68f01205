"""edgevit.metrics: confusion-matrix metrics on hand-computed cases."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgevit.errors import EdgevitError, UnknownKeyError
from edgevit.metrics import METRICS, ConfusionMatrix

# 2×3 case, 3 classes, one ignored pixel (bottom right; its prediction 0 must not count).
TARGET = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 2, 0]])
# Counted (target, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) -> 5 pixels, 4 correct.
#   class 0: intersection 1, union = 2 target + 1 pred - 1 = 2 -> IoU 1/2, accuracy 1/2
#   class 1: intersection 2, union = 2 target + 3 pred - 2 = 3 -> IoU 2/3, accuracy 2/2
#   class 2: intersection 1, union = 1 + 1 - 1 = 1           -> IoU 1,   accuracy 1/1
# mIoU = (1/2 + 2/3 + 1) / 3 = 13/18; pixel accuracy 4/5; mean accuracy (1/2 + 1 + 1) / 3 = 5/6.


def _hand_case(num_classes: int = 3) -> ConfusionMatrix:
    cm = ConfusionMatrix(num_classes)
    cm.update(PRED, TARGET)
    return cm


def test_hand_computed_case():
    cm = _hand_case()
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    np.testing.assert_allclose(cm.iou(), [1 / 2, 2 / 3, 1])
    assert cm.miou() == pytest.approx(13 / 18)
    assert cm.pixel_accuracy() == pytest.approx(4 / 5)
    assert cm.mean_accuracy() == pytest.approx(5 / 6)
    assert cm.n_pixels == 5


def test_absent_class_is_nan_and_left_out_of_means():
    cm = _hand_case(num_classes=4)  # class 3 in neither target nor prediction: union 0
    iou = cm.iou()
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx(13 / 18)
    assert cm.mean_accuracy() == pytest.approx(5 / 6)


def test_class_only_in_prediction_counts_as_zero():
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 2]]), np.array([[0, 0]]))
    # class 0: inter 1, union 2 -> 1/2; class 1: absent -> NaN; class 2: inter 0, union 1 -> 0
    # mIoU = (1/2 + 0) / 2; mean accuracy: only class 0 is in the target -> 1/2
    assert cm.miou() == pytest.approx(0.25)
    assert cm.mean_accuracy() == pytest.approx(0.5)
    assert cm.pixel_accuracy() == pytest.approx(0.5)


def test_empty_matrix_gives_nan_without_warnings():
    cm = ConfusionMatrix(3)
    with np.errstate(all="raise"):
        assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy()) and math.isnan(cm.mean_accuracy())
    assert cm.to_dict()["miou"] is None


def _random_images(n: int, num_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        target = rng.integers(0, num_classes, (6, 7))
        target[rng.random((6, 7)) < 0.2] = 255
        yield rng.integers(0, num_classes, (6, 7)), target


def test_accumulation_equals_one_big_update():
    images = list(_random_images(5, num_classes=4))
    per_image = ConfusionMatrix(4)
    for pred, target in images:
        per_image.update(pred, target)
    big = ConfusionMatrix(4)
    big.update(np.concatenate([p for p, _ in images], axis=1), np.concatenate([t for _, t in images], axis=1))
    np.testing.assert_array_equal(per_image.matrix, big.matrix)
    assert per_image.miou() == big.miou()


def test_merge_equals_single_matrix():
    images = list(_random_images(6, num_classes=5, seed=1))
    whole, a, b = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    for i, (pred, target) in enumerate(images):
        whole.update(pred, target)
        (a if i % 2 else b).update(pred, target)
    assert a.merge(b) is a
    np.testing.assert_array_equal(a.matrix, whole.matrix)
    with pytest.raises(EdgevitError, match="merge"):
        a.merge(ConfusionMatrix(4))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 2, 3, 255])), min_size=1, max_size=30))
def test_matches_pixel_by_pixel_count(pixels):
    pred = np.array([[p for p, _ in pixels]])
    target = np.array([[t for _, t in pixels]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    expected = np.zeros((4, 4), np.int64)
    for p, t in pixels:
        if t != 255:
            expected[t, p] += 1
    np.testing.assert_array_equal(cm.matrix, expected)


def test_update_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(EdgevitError, match=r"\(2, 3\).*\(3, 2\)"):
        cm.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(EdgevitError, match="target values \\[7\\]"):
        cm.update(np.zeros((1, 2), int), np.array([[0, 7]]))
    with pytest.raises(EdgevitError, match="prediction values \\[3\\]"):
        cm.update(np.array([[3, 0]]), np.array([[0, 0]]))
    with pytest.raises(EdgevitError, match="float"):
        cm.update(np.zeros((1, 2)), np.zeros((1, 2), int))
    cm.update(np.array([[9]]), np.array([[255]]))  # prediction under an ignored pixel is not checked
    assert cm.n_pixels == 0


def test_to_dict_is_json_ready():
    d = _hand_case(num_classes=4).to_dict(["a", "b", "c", "d"])
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["per_class_iou"] == {"a": pytest.approx(0.5), "b": pytest.approx(2 / 3), "c": 1.0, "d": None}
    assert d["miou"] == pytest.approx(13 / 18) and d["n_pixels"] == 5
    assert set(_hand_case().to_dict()["per_class_iou"]) == {"0", "1", "2"}


def test_metrics_registry():
    cm = _hand_case()
    assert METRICS.names() == ["mean_accuracy", "miou", "pixel_accuracy"]
    assert METRICS.get("miou")(cm) == pytest.approx(13 / 18)
    assert METRICS.get("pixel_accuracy")(cm) == pytest.approx(0.8)
    with pytest.raises(UnknownKeyError, match="did you mean 'miou'"):
        METRICS.get("mio")
