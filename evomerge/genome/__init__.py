"""Genomes: flat vectors in [0, 1]^D with named coordinates <-> merge recipes (pure functions)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from evomerge.recipe import Recipe


class GenomeSpace(Protocol):
    """What the search needs of a space (PS, DFS, PS+DFS)."""

    @property
    def names(self) -> tuple[str, ...]:
        """Coordinate names, also the Optuna parameter names; each coordinate lives in [0, 1]."""
        ...

    @property
    def template_model(self) -> str:
        """A model with the architecture of the live model candidates are written into."""
        ...

    def x0(self) -> np.ndarray: ...

    def decode(self, x: np.ndarray) -> Recipe: ...

    def encode(self, recipe: Recipe) -> np.ndarray: ...

    def fingerprint(self) -> str: ...
