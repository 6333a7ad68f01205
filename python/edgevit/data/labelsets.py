"""Label sets as data: class names, display palette and ignore index per dataset convention.

A :class:`LabelSet` describes the *train ids* a model predicts: class ``i`` is ``classes[i]`` and
is drawn as ``palette[i]``; pixels equal to ``ignore_index`` belong to no class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import Registry


@dataclass(frozen=True, eq=False)
class LabelSet:
    """Class names and colours of one label convention.

    ``classes``: C names, index = train id. ``palette``: ``(C, 3)`` ``uint8`` RGB, stored read-only.
    ``ignore_index``: label value meaning "no class" (outside ``0..C-1``).
    """

    name: str
    classes: tuple[str, ...]
    palette: np.ndarray
    ignore_index: int = 255

    def __post_init__(self) -> None:
        palette = np.array(self.palette, dtype=np.uint8)
        n = len(self.classes)
        if palette.shape != (n, 3):
            raise ValueError(f"label set {self.name!r}: palette shape {palette.shape}, expected ({n}, 3)")
        if 0 <= self.ignore_index < n:
            raise ValueError(f"label set {self.name!r}: ignore_index {self.ignore_index} is a class")
        palette.flags.writeable = False
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "palette", palette)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # Written out because the generated versions cannot compare or hash an ndarray field.
    def _key(self) -> tuple[str, tuple[str, ...], int]:
        return (self.name, self.classes, self.ignore_index)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LabelSet):
            return NotImplemented
        return self._key() == other._key() and bool(np.array_equal(self.palette, other.palette))

    def __hash__(self) -> int:
        return hash(self._key())


LABELSETS: Registry[LabelSet] = Registry("label set")


def get_labelset(name: str) -> LabelSet:
    """The registered label set ``name`` ("cityscapes", "ade20k", "voc"); unknown names raise
    :class:`~edgevit.errors.UnknownKeyError`."""
    return LABELSETS.get(name)


# --- Cityscapes: the 19 train ids of the official benchmark -------------------------------------

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# labelIds (as stored in *_gtFine_labelIds.png) of the 19 evaluated classes, in train-id order.
CITYSCAPES_EVAL_LABEL_IDS = (
    7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
)


def _cityscapes_lut() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    ids = list(CITYSCAPES_EVAL_LABEL_IDS)
    lut[ids] = np.arange(len(ids), dtype=np.uint8)
    lut.flags.writeable = False
    return lut


CITYSCAPES_LABEL_ID_TO_TRAIN_ID: np.ndarray = _cityscapes_lut()
"""``(256,)`` ``uint8`` lookup table: ``lut[label_id]`` is the train id 0..18, or 255 (ignore)."""

# --- ADE20K SceneParsing (ADEChallengeData2016): 150 classes ------------------------------------

# First name of each line of objectInfo150.txt; class i is stored as i + 1 (0 = "other").
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator",
    "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt",
    "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall",
    "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
# The standard ADE20K colours (as shipped with mmsegmentation and EfficientViT), class order.
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

# --- PASCAL VOC 2012: background + 20 object classes --------------------------------------------

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map as an ``(n, 3)`` ``uint8`` array.

    Bits 0, 1, 2 of an index set the top bit of R, G, B; bits 3, 4, 5 the next bit down; and so on
    (1 → (128, 0, 0), 255 → (224, 224, 192), the colour of VOC's void border).
    """
    ids = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for level in range(8):
        for channel in range(3):
            cmap[:, channel] |= ((ids >> (3 * level + channel)) & 1) << (7 - level)
    return cmap.astype(np.uint8)


LABELSETS.add("cityscapes", LabelSet("cityscapes", CITYSCAPES_CLASSES, np.array(CITYSCAPES_PALETTE)))
LABELSETS.add("ade20k", LabelSet("ade20k", ADE20K_CLASSES, np.array(ADE20K_PALETTE)))
LABELSETS.add("voc", LabelSet("voc", VOC_CLASSES, voc_colormap(len(VOC_CLASSES))))
