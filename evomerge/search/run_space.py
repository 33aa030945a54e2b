"""A run's genome space, and what its winner is written as besides best_recipe.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from evomerge.genome import GenomeSpace
from evomerge.merge.multistage import Stage, dump_stages, with_results
from evomerge.recipe import Recipe
from evomerge.search.objectives import describe


@dataclass(frozen=True)
class RunSpace:
    """A run's genome space (the GenomeSpace calls go to `genome`), and for PS+DFS the PS
    merge its paths read: `ps_recipe`, materialized at `ps_dir`."""

    genome: GenomeSpace
    ps_recipe: Recipe | None = None
    ps_dir: Path | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self.genome.names

    @property
    def template_model(self) -> str:
        return self.genome.template_model

    def x0(self) -> np.ndarray:
        return self.genome.x0()

    def decode(self, x: np.ndarray) -> Recipe:
        return self.genome.decode(x)

    def encode(self, recipe: Recipe) -> np.ndarray:
        return self.genome.encode(recipe)

    def fingerprint(self) -> str:
        return self.genome.fingerprint()

    def winner_files(
        self, run_dir: Path, recipe: Recipe, trial: optuna.trial.FrozenTrial
    ) -> dict[str, str]:
        """Files besides best_recipe.yaml: for PS+DFS, the PS merge and the path in one
        two-stage file that needs only the sources (`best_recipe_standalone.yaml`)."""
        if self.ps_recipe is None or self.ps_dir is None:
            return {}
        path = run_dir / "best_recipe_standalone.yaml"
        header = (
            f"# best candidate of this run: trial {trial.number}, {describe(trial)}; stage\n"
            f"# ps_model re-merges the PS result, then the path runs over it:\n"
            f"# python -m evomerge merge {path} OUT_DIR\n"
        )
        stages = (
            Stage("ps_model", self.ps_recipe),
            Stage(None, with_results(recipe, {str(self.ps_dir): "ps_model"})),
        )
        return {path.name: header + dump_stages(stages)}
