"""edgevit.data: label sets and segmentation dataset layouts on tiny fake trees and the shared pack."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgevit.data import LAYOUTS, SegDataset, get_labelset, open_segmentation_dataset
from edgevit.data.labelsets import CITYSCAPES_LABEL_ID_TO_TRAIN_ID, voc_colormap
from edgevit.errors import EdgevitError, UnknownKeyError


def _image(path: Path, h: int = 2, w: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def _label(path: Path, values, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(values, np.uint8))
    if mode == "P":
        im.putpalette(voc_colormap().tobytes())
    im.save(path)


# --- label sets -----------------------------------------------------------------------------------


def test_labelsets():
    cs, ade, voc = get_labelset("cityscapes"), get_labelset("ade20k"), get_labelset("voc")
    assert (cs.num_classes, ade.num_classes, voc.num_classes) == (19, 150, 21)
    assert cs.classes[13] == "car" and tuple(cs.palette[13]) == (0, 0, 142)
    assert ade.classes[:3] == ("wall", "building", "sky") and ade.classes[-1] == "flag"
    assert ade.palette[:2].tolist() == [[120, 120, 120], [180, 120, 120]] and ade.palette[-1].tolist() == [92, 0, 255]
    assert len(set(map(tuple, ade.palette.tolist()))) > 140  # near-unique colours
    assert voc.classes[15] == "person" and voc.palette[:3].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert voc_colormap()[255].tolist() == [224, 224, 192]
    for ls in (cs, ade, voc):
        assert ls.palette.dtype == np.uint8 and ls.palette.shape == (ls.num_classes, 3) and ls.ignore_index == 255
        assert not ls.palette.flags.writeable
    assert CITYSCAPES_LABEL_ID_TO_TRAIN_ID[[7, 26, 33, 0, 6, 34, 255]].tolist() == [0, 13, 18, 255, 255, 255, 255]
    with pytest.raises(UnknownKeyError, match="did you mean 'cityscapes'"):
        get_labelset("cityscape")


def test_ade20k_classes_match_objectinfo(shared_data):
    rows = (shared_data / "seg" / "ade20k_val3" / "objectInfo150.txt").read_text().splitlines()[1:]
    names = tuple(row.split("\t")[4].split(",")[0].strip() for row in rows)
    assert get_labelset("ade20k").classes == names


# --- layouts on fake trees ------------------------------------------------------------------------


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    for city in ("zurich", "aachen"):
        stem = f"{city}_000000_000019"
        _image(tmp_path / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png")
        _label(tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", [[26, 0, 7], [33, 24, 255]])
        _label(tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_instanceIds.png", [[0, 0, 0], [0, 0, 0]])
    ds = open_segmentation_dataset(tmp_path, "cityscapes")
    assert isinstance(ds, SegDataset) and ds.num_classes == 19 and ds.labelset == get_labelset("cityscapes")
    assert [s.name for s in ds] == ["val/aachen/aachen_000000_000019", "val/zurich/zurich_000000_000019"]
    sample = ds[0]
    # car (labelId 26) -> 13, unlabeled (0) -> 255, road (7) -> 0, bicycle (33) -> 18, person (24) -> 11
    np.testing.assert_array_equal(sample.label, [[13, 255, 0], [18, 11, 255]])
    assert sample.label.dtype == np.uint8 and sample.image.shape == (2, 3, 3) and sample.image.dtype == np.uint8
    assert sample.label_path.name == "aachen_000000_000019_gtFine_labelIds.png"


def test_ade20k_shifts_labels(tmp_path):
    _image(tmp_path / "images" / "validation" / "ADE_val_00000001.jpg", 2, 2)
    _label(tmp_path / "annotations" / "validation" / "ADE_val_00000001.png", [[0, 5], [1, 150]])
    ds = open_segmentation_dataset(tmp_path, "ade20k")
    assert ds.num_classes == 150 and ds[0].name == "validation/ADE_val_00000001"
    np.testing.assert_array_equal(ds[0].label, [[255, 4], [0, 149]])  # 0 -> ignore, v -> v - 1


def test_ade20k_out_of_range_value(tmp_path):
    _image(tmp_path / "images" / "a.jpg", 1, 2)
    _label(tmp_path / "annotations" / "a.png", [[1, 151]])
    with pytest.raises(EdgevitError, match=r"a\.png: stored label values 151 "):
        open_segmentation_dataset(tmp_path, "ade20k")[0]


def _voc_official(root: Path) -> None:
    for name in ("2007_000001", "2007_000002", "2007_000003"):  # 000003 has no segmentation
        _image(root / "JPEGImages" / f"{name}.jpg", 1, 3)
    for name in ("2007_000002", "2007_000001"):
        _label(root / "SegmentationClass" / f"{name}.png", [[0, 15, 255]], mode="P")


def test_voc_official_layout(tmp_path):
    _voc_official(tmp_path)
    ds = open_segmentation_dataset(tmp_path, "voc")  # no val.txt: the labelled images
    assert [ds[i].name for i in range(len(ds))] == ["2007_000001", "2007_000002"]
    np.testing.assert_array_equal(ds[0].label, [[0, 15, 255]])
    assert ds.num_classes == 21

    listing = tmp_path / "ImageSets" / "Segmentation" / "val.txt"
    listing.parent.mkdir(parents=True)
    listing.write_text("2007_000002\n")
    assert [s.name for s in open_segmentation_dataset(tmp_path, "voc")] == ["2007_000002"]

    listing.write_text("2007_000002\n2007_000003\n")
    with pytest.raises(EdgevitError, match=r"2007_000003\.jpg: no label file \(expected .*2007_000003\.png\)"):
        open_segmentation_dataset(tmp_path, "voc")


def test_voc_flat_layout_and_bad_value(tmp_path):
    _image(tmp_path / "images" / "b.png", 1, 3)
    _image(tmp_path / "images" / "a.jpg", 1, 3)
    _label(tmp_path / "labels" / "a.png", [[0, 20, 255]], mode="P")
    _label(tmp_path / "labels" / "b.png", [[0, 21, 255]], mode="P")
    ds = open_segmentation_dataset(tmp_path, "voc")
    assert [p.name for p in ds.pairs] == ["a", "b"]
    np.testing.assert_array_equal(ds[0].label, [[0, 20, 255]])
    with pytest.raises(EdgevitError, match=r"b\.png: stored label values 21 .* 21 classes of layout 'voc'"):
        ds[1]


def test_folder_layout(tmp_path):
    _image(tmp_path / "images" / "x.png", 2, 2)
    _label(tmp_path / "labels" / "x.png", [[0, 1], [2, 255]])
    with pytest.raises(EdgevitError, match="pass num_classes"):
        open_segmentation_dataset(tmp_path, "folder")
    ds = open_segmentation_dataset(tmp_path, "folder", num_classes=3)
    assert ds.labelset is None and ds.num_classes == 3
    np.testing.assert_array_equal(ds[0].label, [[0, 1], [2, 255]])
    with pytest.raises(EdgevitError, match=r"x\.png: stored label values 2 .*pass the right num_classes"):
        open_segmentation_dataset(tmp_path, "folder", num_classes=2)[0]


def test_limit_and_sorted_order(tmp_path):
    for name in ("c", "a", "b"):
        _image(tmp_path / "images" / f"{name}.png")
        _label(tmp_path / "labels" / f"{name}.png", np.zeros((2, 3)))
    assert [s.name for s in open_segmentation_dataset(tmp_path, "folder", 1, limit=2)] == ["a", "b"]
    with pytest.raises(EdgevitError, match="limit must be at least 1"):
        open_segmentation_dataset(tmp_path, "folder", 1, limit=0)


def test_pixels_are_loaded_lazily(tmp_path):
    _image(tmp_path / "images" / "a.png")
    (tmp_path / "images" / "b.png").write_text("not a png")
    for name in ("a", "b"):
        _label(tmp_path / "labels" / f"{name}.png", np.zeros((2, 3)))
    ds = open_segmentation_dataset(tmp_path, "folder", num_classes=1)
    assert ds[0].label.shape == (2, 3)
    with pytest.raises(EdgevitError, match=r"b\.png: not a readable image"):
        ds[1]


# --- errors ---------------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(EdgevitError, match=r"nope: dataset root does not exist; .*leftImg8bit/ and gtFine/"):
        open_segmentation_dataset(tmp_path / "nope", "cityscapes")
    (tmp_path / "file").write_text("")
    with pytest.raises(EdgevitError, match="file: dataset root is not a directory"):
        open_segmentation_dataset(tmp_path / "file", "ade20k")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_no_images(tmp_path, layout):
    (tmp_path / "images").mkdir()
    with pytest.raises(EdgevitError, match="no images found"):
        open_segmentation_dataset(tmp_path, layout, num_classes=None if layout != "folder" else 2)


def test_image_without_label(tmp_path):
    _image(tmp_path / "leftImg8bit" / "val" / "bonn" / "bonn_1_leftImg8bit.png")
    expected = r"bonn_1_leftImg8bit\.png: no label file \(expected .*gtFine/val/bonn/bonn_1_gtFine_labelIds\.png\)"
    with pytest.raises(EdgevitError, match=expected):
        open_segmentation_dataset(tmp_path, "cityscapes")


def test_label_size_differs_from_image(tmp_path):
    _image(tmp_path / "images" / "a.jpg", h=4, w=6)
    _label(tmp_path / "annotations" / "a.png", np.ones((3, 6)))
    with pytest.raises(EdgevitError, match=r"a\.png: label is 6x3 \(WxH\) but its image .*a\.jpg is 6x4"):
        open_segmentation_dataset(tmp_path, "ade20k")[0]


def test_rgb_label_file(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "labels" / "a.png")  # a colour-coded label
    with pytest.raises(EdgevitError, match=r"labels/a\.png: label map has image mode 'RGB'"):
        open_segmentation_dataset(tmp_path, "voc")[0]


def test_argument_errors(tmp_path):
    with pytest.raises(UnknownKeyError, match="unknown dataset layout 'ade'"):
        open_segmentation_dataset(tmp_path, "ade")
    with pytest.raises(EdgevitError, match="has 150 classes, not num_classes=19"):
        open_segmentation_dataset(tmp_path, "ade20k", num_classes=19)


# --- the shared evaluation pack -------------------------------------------------------------------


def test_shared_voc2012_val14(shared_data):
    ds = open_segmentation_dataset(shared_data / "seg" / "voc2012_val14", "voc", num_classes=21)
    assert len(ds) == 14
    values = set()
    for sample in ds:
        assert sample.image.shape[:2] == sample.label.shape and sample.image.dtype == np.uint8
        values |= set(np.unique(sample.label).tolist())
    assert values <= set(range(21)) | {255} and 255 in values


def test_shared_ade20k_val3(shared_data):
    ds = open_segmentation_dataset(shared_data / "seg" / "ade20k_val3", "ade20k")
    assert [s.name for s in ds] == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]
    for sample in ds:
        assert sample.image.shape[:2] == sample.label.shape
        assert sample.label.max() == 255 or sample.label.max() < 150
