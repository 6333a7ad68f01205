"""Export tasks: what the generic export pipeline needs to know about a model family's task."""

from .base import TASKS, ExportTask, task_for

__all__ = ["TASKS", "ExportTask", "task_for"]
