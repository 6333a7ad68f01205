"""Semantic-segmentation datasets on disk, read through one small protocol.

:func:`open_segmentation_dataset` finds image/label pairs for a named layout (see :data:`LAYOUTS`)
and returns a :class:`SegDataset`; pixels are read lazily, one sample per ``dataset[i]``. Every
sample's label is in *train ids*: ``uint8`` with classes ``0..C-1`` and 255 = ignore.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from ..errors import EdgevitError
from ..io import read_image, read_label
from ..registry import Registry
from .labelsets import CITYSCAPES_LABEL_ID_TO_TRAIN_ID, LabelSet, get_labelset

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True, eq=False)
class SegSample:
    """One image with its label map.

    ``image``: ``(H, W, 3)`` ``uint8`` RGB. ``label``: ``(H, W)`` ``uint8`` train ids, ``0..C-1``,
    255 = ignore. ``name``: the image path relative to the layout's image folder, without suffix.
    """

    name: str
    image_path: Path
    label_path: Path
    image: np.ndarray
    label: np.ndarray


@runtime_checkable
class SegDataset(Protocol):
    """What evaluation code needs from a segmentation dataset."""

    @property
    def labelset(self) -> LabelSet | None: ...

    @property
    def num_classes(self) -> int: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> SegSample: ...


class Pair(NamedTuple):
    """A sample's name and file paths, before any pixels are read."""

    name: str
    image_path: Path
    label_path: Path


# Maps a stored label map (H, W, any integer dtype) to int64 train ids; IGNORE_INDEX = ignore.
LabelMapper = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Layout:
    """How one on-disk convention is found and decoded.

    ``find(root)`` returns the sorted pairs (raising EdgevitError when there are none),
    ``to_train_ids`` maps stored label values, ``labelset`` names the label set (``None``: the
    caller gives ``num_classes``), ``expects`` tells the user what the root must contain.
    """

    name: str
    find: Callable[[Path], list[Pair]]
    to_train_ids: LabelMapper
    labelset: str | None
    expects: str


LAYOUTS: Registry[Layout] = Registry("dataset layout")


class SegmentationDataset:
    """Image/label pairs of one layout; implements :class:`SegDataset`. Loads pixels per item."""

    def __init__(
        self, root: Path, layout: Layout, pairs: list[Pair], num_classes: int, labelset: LabelSet | None
    ) -> None:
        self.root = root
        self.layout = layout
        self.pairs = pairs
        self.num_classes = num_classes
        self.labelset = labelset

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[SegSample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> SegSample:
        name, image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        stored = read_label(label_path)
        if stored.shape != image.shape[:2]:
            (lh, lw), (ih, iw) = stored.shape, image.shape[:2]
            raise EdgevitError(
                f"{label_path}: label is {lw}x{lh} (WxH) but its image {image_path} is {iw}x{ih}; "
                "labels must be pixel-aligned with their images"
            )
        label = self.layout.to_train_ids(stored)
        bad = (label < 0) | ((label >= self.num_classes) & (label != IGNORE_INDEX))
        if bad.any():
            values = ", ".join(str(v) for v in np.unique(stored[bad])[:8])
            fix = "pass the right num_classes" if self.layout.labelset is None else "check the layout"
            raise EdgevitError(
                f"{label_path}: stored label values {values} are not among the {self.num_classes} "
                f"classes of layout {self.layout.name!r} nor ignore ({IGNORE_INDEX}); {fix} or fix the file"
            )
        return SegSample(name, image_path, label_path, image, label.astype(np.uint8))

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.layout.name!r}, {str(self.root)!r}, {len(self)} samples)"


def open_segmentation_dataset(
    root: str | os.PathLike[str], layout: str, num_classes: int | None = None, limit: int | None = None
) -> SegDataset:
    """Open the dataset at ``root`` stored in ``layout`` ("cityscapes", "ade20k", "voc", "folder").

    Pairs are sorted by image path (deterministic). ``num_classes`` is required for "folder" and
    must match the label set otherwise; ``limit`` keeps the first ``limit`` pairs. Checks made
    here: root exists, images exist, each image has a label file; label size and values are
    checked when a sample is read. All failures raise a one-line :class:`EdgevitError`.
    """
    spec = LAYOUTS.get(layout)
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise EdgevitError(f"{root}: dataset root {what}; pass the folder that contains {spec.expects}")
    labelset = get_labelset(spec.labelset) if spec.labelset else None
    if labelset is not None:
        if num_classes not in (None, labelset.num_classes):
            raise EdgevitError(
                f"{root}: layout {layout!r} has {labelset.num_classes} classes, not num_classes="
                f"{num_classes}; drop num_classes or use the 'folder' layout"
            )
        num_classes = labelset.num_classes
    elif num_classes is None:
        raise EdgevitError(f"{root}: layout {layout!r} has no label set; pass num_classes")
    if not 1 <= num_classes <= IGNORE_INDEX:
        raise EdgevitError(f"{root}: num_classes must be 1..{IGNORE_INDEX} (labels are uint8), got {num_classes}")
    if limit is not None and limit < 1:
        raise EdgevitError(f"{root}: limit must be at least 1, got {limit}")
    pairs = spec.find(root)[:limit]
    for pair in pairs:
        if not pair.label_path.is_file():
            expected = pair.label_path
            raise EdgevitError(f"{pair.image_path}: no label file (expected {expected}); add it or drop the image")
    return SegmentationDataset(root, spec, pairs, num_classes, labelset)


# --- layouts --------------------------------------------------------------------------------------


def _images_under(folder: Path, pattern: str, recursive: bool) -> list[Path]:
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _no_images(folder: Path, pattern: str, expects: str) -> EdgevitError:
    return EdgevitError(f"{folder}: no images found ({pattern}); pass the folder that contains {expects}")


def _by_stem(images_dir: Path, labels_dir: Path, expects: str) -> list[Pair]:
    """Flat ``images_dir/*.{png,jpg,...}`` ↔ ``labels_dir/<stem>.png``."""
    images = _images_under(images_dir, "*", recursive=False)
    if not images:
        raise _no_images(images_dir, "*.png, *.jpg", expects)
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise EdgevitError(f"{path}: two images named {path.stem!r} ({stems[path.stem].name}); keep one")
        stems[path.stem] = path
    return [Pair(stem, path, labels_dir / f"{stem}.png") for stem, path in stems.items()]


def _identity(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.int64)


CITYSCAPES_EXPECTS = "leftImg8bit/ and gtFine/"


def _find_cityscapes(root: Path) -> list[Pair]:
    images_dir, marker = root / "leftImg8bit", "_leftImg8bit"
    images = _images_under(images_dir, f"*{marker}.png", recursive=True)
    if not images:
        raise _no_images(images_dir, f"**/*{marker}.png", CITYSCAPES_EXPECTS)
    pairs = []
    for path in images:
        rel = path.relative_to(images_dir)
        stem = rel.name[: -len(f"{marker}.png")]
        label = root / "gtFine" / rel.parent / f"{stem}_gtFine_labelIds.png"
        pairs.append(Pair((rel.parent / stem).as_posix(), path, label))
    return pairs


def _cityscapes_to_train_ids(stored: np.ndarray) -> np.ndarray:
    # labelIds outside 0..255 are no Cityscapes class; clipping sends them to ignore entries.
    return CITYSCAPES_LABEL_ID_TO_TRAIN_ID[np.clip(stored, 0, 255)].astype(np.int64)


ADE20K_EXPECTS = "images/ (*.jpg) and annotations/ (*.png)"


def _find_ade20k(root: Path) -> list[Pair]:
    images_dir = root / "images"
    images = _images_under(images_dir, "*.jpg", recursive=True)
    if not images:
        raise _no_images(images_dir, "**/*.jpg", ADE20K_EXPECTS)
    pairs = []
    for path in images:
        rel = path.relative_to(images_dir).with_suffix("")
        pairs.append(Pair(rel.as_posix(), path, (root / "annotations" / rel).with_suffix(".png")))
    return pairs


def _ade20k_to_train_ids(stored: np.ndarray) -> np.ndarray:
    # Stored 0 is "other" (ignored); class i is stored as i + 1.
    label = stored.astype(np.int64) - 1
    label[label == IGNORE_INDEX] = -1  # a stored 256 must not pass as ignore
    label[stored == 0] = IGNORE_INDEX
    return label


VOC_EXPECTS = "JPEGImages/ and SegmentationClass/ (or images/ and labels/)"


def _find_voc(root: Path) -> list[Pair]:
    """Official VOC2012 tree, or the flat ``images/`` + ``labels/`` pair."""
    if not (root / "JPEGImages").is_dir():
        return _by_stem(root / "images", root / "labels", VOC_EXPECTS)
    listing = root / "ImageSets" / "Segmentation" / "val.txt"
    if listing.is_file():
        ids = sorted({line.strip() for line in listing.read_text().splitlines() if line.strip()})
    else:  # JPEGImages also holds detection-only images: the label files say which are segmented
        ids = sorted(p.stem for p in (root / "SegmentationClass").glob("*.png"))
    if not ids:
        raise _no_images(root / "SegmentationClass", "*.png", VOC_EXPECTS)
    source = listing if listing.is_file() else root / "SegmentationClass"
    pairs = [Pair(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]
    for pair in pairs:
        if not pair.image_path.is_file():
            raise EdgevitError(f"{pair.image_path}: image missing (listed by {source}); add it or drop the entry")
    return pairs


FOLDER_EXPECTS = "images/ and labels/ (label = <image stem>.png)"


def _find_folder(root: Path) -> list[Pair]:
    return _by_stem(root / "images", root / "labels", FOLDER_EXPECTS)


for _layout in (
    Layout("cityscapes", _find_cityscapes, _cityscapes_to_train_ids, "cityscapes", CITYSCAPES_EXPECTS),
    Layout("ade20k", _find_ade20k, _ade20k_to_train_ids, "ade20k", ADE20K_EXPECTS),
    Layout("voc", _find_voc, _identity, "voc", VOC_EXPECTS),
    Layout("folder", _find_folder, _identity, None, FOLDER_EXPECTS),
):
    LAYOUTS.add(_layout.name, _layout)
