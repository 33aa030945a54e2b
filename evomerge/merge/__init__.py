"""The merge core: recipe -> per-tensor plan -> merged tensors, to disk or into a live model."""

from evomerge.merge.cache import SourceCache
from evomerge.merge.execute import MergeOptions, merge_into_model, merge_to_disk
from evomerge.merge.methods import METHODS, get_method
from evomerge.merge.recipe_checks import check_recipe

__all__ = [
    "METHODS",
    "MergeOptions",
    "SourceCache",
    "check_recipe",
    "get_method",
    "merge_into_model",
    "merge_to_disk",
]
