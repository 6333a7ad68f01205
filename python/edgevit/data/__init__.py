"""Datasets and label conventions: label sets as data, segmentation datasets behind one protocol."""

from .labelsets import LABELSETS, LabelSet, get_labelset
from .segmentation import LAYOUTS, SegDataset, SegmentationDataset, SegSample, open_segmentation_dataset

__all__ = [
    "LABELSETS",
    "LAYOUTS",
    "LabelSet",
    "SegDataset",
    "SegSample",
    "SegmentationDataset",
    "get_labelset",
    "open_segmentation_dataset",
]
