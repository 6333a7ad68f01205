"""edgevit: EfficientViT models built, quantized and lowered for devices, with measured fidelity.

Public API (the CLI maps 1:1 onto it)::

    edgevit.list_models("*ade20k")
    model = edgevit.create_model("efficientvit-seg-b1-ade20k", weights="b1.pt")
    ds = edgevit.open_segmentation_dataset("ADEChallengeData2016", "ade20k")
    edgevit.evaluate_segmentation(model, ds).miou
"""

from .api import demo, evaluate, model_info, predict
from .data.segmentation import open_segmentation_dataset
from .errors import EdgevitError, MissingDependencyError, UnknownKeyError
from .evaluate import evaluate_segmentation
from .models import count_macs, count_params, create_model, list_models
from .predict import predict_images
from .runtime import load_artifact
from .sr.evaluate import eval_sr, evaluate_sr
from .sam.evaluate import evaluate_sam
from .sam.export import export_sam, load_sam_artifacts

__version__ = "0.1.0"
__all__ = [
    "EdgevitError", "MissingDependencyError", "UnknownKeyError", "count_macs", "count_params", "create_model",
    "demo", "evaluate", "evaluate_sam", "export_sam", "load_sam_artifacts", "evaluate_segmentation", "list_models", "load_artifact", "model_info", "open_segmentation_dataset",
    "predict", "predict_images", "eval_sr", "evaluate_sr",
]
