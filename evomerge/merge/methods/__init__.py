"""Merge methods: pure tensor functions and the one registry that names them.

Each method receives the input tensors of one output tensor, already on the compute device in
float32 (float64 stays float64), and returns the merged tensor. Methods on task vectors
(`takes_task_vectors`) get the base in float32 but the other inputs in their own (or the
recipe's) dtype when it is narrower, since x - base converts them exactly without a float32
copy; in a search they get the task vectors themselves (`MergeArgs.task_vectors`). Methods with a base model get the
non-base inputs in `tensors` and the base in `base`; the others get every input in `tensors`.
Definitions follow mergekit 0.1.5 (same YAML names, parameters and defaults); the deliberate
differences are listed in the README ("Merging").
"""

from evomerge.merge.methods.base import REQUIRED, MergeArgs, Method, MethodFn, Param, TaskVector
from evomerge.merge.methods.registry import METHODS, get_method

__all__ = [
    "METHODS",
    "REQUIRED",
    "MergeArgs",
    "Method",
    "MethodFn",
    "Param",
    "TaskVector",
    "get_method",
]
