"""Calibration and fidelity image sets: real photos (never random tensors), optionally with labels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io
from ..data.segmentation import open_segmentation_dataset
from ..errors import EdgevitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class ImageSet:
    """``images``: uint8 H×W×3 RGB; ``labels``: uint8 H×W (255 ignore) or None; ``digest`` identifies the files."""

    source: str
    names: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray] | None
    digest: str

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "count": len(self), "digest": self.digest, "labelled": self.labels is not None}

    def split(self, n_first: int) -> tuple[ImageSet, ImageSet]:
        """The first ``n_first`` items and the rest (each with its own digest)."""
        def part(sl: slice) -> ImageSet:
            labels = self.labels[sl] if self.labels is not None else None
            return ImageSet(self.source, self.names[sl], self.images[sl], labels, _digest(self.names[sl], self.images[sl]))

        return part(slice(0, n_first)), part(slice(n_first, None))


def _digest(names: list[str], images: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, image in zip(names, images):
        h.update(name.encode())
        h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


# Folder names of dataset annotations (VOC labels/, ADE20K annotations/, GrabCut masks/, Cityscapes gtFine/).
LABEL_FOLDERS = frozenset({"labels", "annotations", "masks", "gtfine", "segmentationclass"})


def load_image_set(root: str | Path, layout: str | None = None, limit: int | None = None,
                   num_classes: int | None = None) -> ImageSet:
    """Images (and labels, when ``layout`` names a labelled dataset layout) from ``root``, sorted, first ``limit``.

    Without ``layout`` every image file under ``root`` is used, unlabelled, except those inside folders named
    like annotation folders (:data:`LABEL_FOLDERS`): label maps are not photos and must not calibrate int8.
    """
    root = Path(root)
    if layout is not None:
        ds = open_segmentation_dataset(root, layout, num_classes=num_classes, limit=limit)
        samples = [ds[i] for i in range(len(ds))]
        names = [s.name for s in samples]
        images = [s.image for s in samples]
        return ImageSet(str(root), names, images, [s.label for s in samples], _digest(names, images))
    if not root.is_dir():
        raise EdgevitError(f"{root}: calibration folder not found; pass a folder of real photos")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and not LABEL_FOLDERS & {part.lower() for part in p.relative_to(root).parts[:-1]})[:limit]
    if not files:
        raise EdgevitError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found; pass a folder of real photos")
    names = [str(p.relative_to(root)) for p in files]
    images = [io.read_image(p) for p in files]
    return ImageSet(str(root), names, images, None, _digest(names, images))
