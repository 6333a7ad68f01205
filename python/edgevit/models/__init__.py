"""Model families, the registry and checkpoint loading."""

from .checkpoint import KeyMap, load_weights, read_state_dict
from .contract import SegContract, TensorSpec
from .profile import count_macs, count_params
from .registry import ModelEntry, create_model, get_model_entry, list_models, register_model

__all__ = [
    "KeyMap", "ModelEntry", "SegContract", "TensorSpec", "count_macs", "count_params", "create_model",
    "get_model_entry", "list_models", "load_weights", "read_state_dict", "register_model",
]
