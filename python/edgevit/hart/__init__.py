"""Distilled HART: hybrid autoregressive image generation (multi-scale VQ tokens + a residual
diffusion MLP) sized for devices. See :mod:`edgevit.hart.configs` for the named configurations."""

from .configs import CONFIGS, HartConfig, describe, get_config, list_configs
from .model import HartModel
from .sampler import SamplerSettings, generate, generate_classes

__all__ = ["CONFIGS", "HartConfig", "HartModel", "SamplerSettings", "describe", "generate", "generate_classes",
           "get_config", "list_configs"]
