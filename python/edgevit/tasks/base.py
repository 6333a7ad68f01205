"""The export-task protocol: the task-specific half of ``edgevit export`` (see :mod:`edgevit.export`).

The pipeline itself is generic — build, rewrite for export, calibrate, lower, load back, measure, gate,
fall back to float layers, write atomically. A task says what the artifact's static input is, how real
images become model inputs, how an artifact's fidelity against the float model is measured, and which
budget it must meet. Tasks are registered by the ``task`` string of the model's contract.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..registry import Registry


class Fidelity(Protocol):
    """A measured comparison of an artifact with the float model (task-specific fields)."""

    def to_dict(self) -> dict[str, object]: ...

    def summary(self) -> str: ...  # one line for the CLI, e.g. "agreement 98.3%, mIoU drop 0.02 points"


class Gate(Protocol):
    """An accuracy budget: ``failures(fid)`` lists what is missed (empty: passed)."""

    def failures(self, fid: Any) -> list[str]: ...

    def to_dict(self) -> dict[str, float]: ...


LogitsFn = Callable[[np.ndarray], np.ndarray]


class ExportTask(Protocol):
    name: str  # the contract's task string

    def artifact_contract(self, contract: Any, size: tuple[int, int] | None) -> Any:
        """``contract`` specialised to the artifact's static input size (``None``: the task's default)."""

    def io_specs(self, contract: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Manifest ``inputs`` and ``outputs``: name, static shape, dtype, layout."""

    def load_images(self, root: str | Path, layout: str | None, limit: int | None, contract: Any) -> Any:
        """Real images (and whatever references the task measures against) from ``root``."""

    def model_inputs(self, contract: Any, images: Any) -> list[np.ndarray]:
        """Real images → artifact inputs (float32, the static input shape): calibration and examples."""

    def measure(self, reference: LogitsFn, candidate: LogitsFn, contract: Any, images: Any) -> Fidelity:
        """Fidelity of ``candidate`` (the artifact) against ``reference`` (eager float) on ``images``."""

    def default_gate(self) -> Gate: ...

    def default_ranges(self, format: str) -> str | None:
        """The static int8 range method this task measured best in ``format`` (a ``RANGE_METHODS`` key), or
        None for the format's own default."""


# task string -> "module:Class", imported on first use.
TASKS: Registry[str] = Registry("task")
TASKS.add("semantic-segmentation", "edgevit.tasks.segmentation:SegmentationTask")
TASKS.add("super-resolution", "edgevit.tasks.super_resolution:SuperResolutionTask")


def task_for(contract: Any) -> ExportTask:
    """The export task of a model contract (by its ``task`` string); unknown tasks raise with close matches."""
    module, cls = TASKS.get(contract.task).split(":")
    return getattr(importlib.import_module(module), cls)()
