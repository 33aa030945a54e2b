"""The embedded toy model family: a tiny Llama base and specialists on which merging matters.

from evomerge.toy import ensure_family
family = ensure_family()          # built on first use, then cached
family.base, family.path("math_en"), family.path("lang_ja")
"""

from evomerge.toy.build import (
    FAMILY_VERSION,
    ToyFamily,
    build_family,
    build_family_pinned,
    default_cache_dir,
    load_family,
)
from evomerge.toy.family import SIZES, FamilyConfig, Specialist
from evomerge.toy.probe import Score, score
from evomerge.toy.store import ensure_family, load_shipped, verify_build
from evomerge.toy.tasks import TASK_SPECS, task_examples

__all__ = [
    "FAMILY_VERSION",
    "SIZES",
    "TASK_SPECS",
    "FamilyConfig",
    "Score",
    "Specialist",
    "ToyFamily",
    "build_family",
    "build_family_pinned",
    "default_cache_dir",
    "ensure_family",
    "load_family",
    "load_shipped",
    "score",
    "task_examples",
    "verify_build",
]
