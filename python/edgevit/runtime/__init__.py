"""Runners for eager PyTorch and exported artifacts."""

from .base import CheckedRunner, Runner, TorchRunner, load_artifact

__all__ = ["CheckedRunner", "Runner", "TorchRunner", "load_artifact"]
