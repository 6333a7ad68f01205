"""Segment-anything workflow: the predictor (encode once, decode per prompt) and interactive evaluation."""

from .predictor import Predictor

__all__ = ["Predictor"]
