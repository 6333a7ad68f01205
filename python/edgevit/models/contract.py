"""The model contract: everything a runtime or an app needs to feed a model and read its output.

It is declared once per model (in the registry) and copied verbatim into artifact manifests, so
pre-processing constants never get hand-copied into app code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .. import processing
from ..data.labelsets import LabelSet, get_labelset


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output. ``shape`` entries are ints or symbolic names ("N", "H", "H/8")."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    layout: str
    description: str = ""


@dataclass(frozen=True)
class SegContract:
    """Semantic segmentation: RGB image in, stride-``output_stride`` logits out.

    Input ``image``: float32 N×3×H×W, RGB, ``(x/255 - mean) / std``, H and W multiples of
    ``size_multiple``. Output ``logits``: float32 N×C×H/stride×W/stride (unnormalised class scores).
    Evaluation resizes images with ``resize`` (bicubic) and upsamples logits bicubically to the label size.
    """

    labelset_name: str
    resize: processing.ResizePolicy
    eval_size: tuple[int, int]
    mean: tuple[float, float, float] = processing.IMAGENET_MEAN
    std: tuple[float, float, float] = processing.IMAGENET_STD
    output_stride: int = 8
    size_multiple: int = 32
    task: str = field(default="semantic-segmentation", init=False)

    @property
    def labelset(self) -> LabelSet:
        return get_labelset(self.labelset_name)

    @property
    def num_classes(self) -> int:
        return self.labelset.num_classes

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec(
                "image", ("N", 3, "H", "W"), "float32", "NCHW",
                f"RGB, (x/255 - mean)/std, H and W multiples of {self.size_multiple}",
            ),
        )

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        s = self.output_stride
        return (
            TensorSpec("logits", ("N", self.num_classes, f"H/{s}", f"W/{s}"), "float32", "NCHW", "class scores"),
        )

    def check_input_size(self, height: int, width: int) -> None:
        m = self.size_multiple
        if height % m or width % m:
            raise ValueError(f"input size {height}x{width} is not a multiple of {m}")

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 H×W×3 RGB → float32 1×3×H'×W' model input (evaluation resize + normalisation)."""
        return processing.image_to_input(image, self.resize, self.mean, self.std)

    def postprocess(self, logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """float32 C×h×w (or 1×C×h×w) logits → H×W label map at ``size`` (bicubic upsample, argmax)."""
        return processing.logits_to_labels(logits, size)

    def to_dict(self) -> dict:
        """JSON-ready description (goes into model info and artifact manifests)."""
        ls = self.labelset
        return {
            "task": self.task,
            "inputs": [asdict(t) for t in self.inputs],
            "outputs": [asdict(t) for t in self.outputs],
            "normalization": {"scale": 1 / 255, "mean": list(self.mean), "std": list(self.std), "color": "RGB"},
            "resize": {**processing.policy_to_dict(self.resize), "interpolation": "bicubic"},
            "eval_size": list(self.eval_size),
            "output_stride": self.output_stride,
            "logits_upsample": "bicubic",
            "labels": {"name": ls.name, "classes": list(ls.classes), "palette": ls.palette.tolist(),
                       "ignore_index": ls.ignore_index},
        }

    @classmethod
    def from_dict(cls, d: dict) -> SegContract:
        """Inverse of :meth:`to_dict` (used to run artifacts from their manifest alone)."""
        resize = dict(d["resize"])
        kind = resize.pop("kind")
        resize.pop("interpolation", None)
        policy = {"FixedSize": processing.FixedSize, "ShortSide": processing.ShortSide}[kind](**resize)
        norm = d["normalization"]
        return cls(d["labels"]["name"], policy, tuple(d["eval_size"]), tuple(norm["mean"]), tuple(norm["std"]),
                   d["output_stride"])

