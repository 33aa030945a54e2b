"""The mixed binary/continuous CMA-ES variants on a synthetic DFS fitness, and the path plot."""

from pathlib import Path

import numpy as np
import pytest

from evomerge.errors import ConfigError, RecipeError
from evomerge.genome.dfs import DFSSpace
from evomerge_dev.analysis.dfs_plot import plot_path
from evomerge_dev.analysis.mixed import VARIANTS, best_so_far, run_cmaes

SPACE = DFSSpace(models=("/m/a", "/m/b"), model_names=("a", "b"), num_layers=(2, 2), repeats=2)


def synthetic(x: np.ndarray) -> float | None:
    """Rewards using b's layers with scales near 1; an empty path fails."""
    try:
        recipe = SPACE.decode(x)
    except RecipeError:
        return None
    on_b = sum(s.sources[0].model == "/m/b" for s in recipe.slices)
    scales = [abs(np.log(s.input_scale)) for s in recipe.slices if s.input_scale is not None]
    return on_b - float(np.sum(scales))


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_spend_exactly_the_budget_and_improve(variant):
    values = run_cmaes(SPACE, synthetic, variant=variant, n_trials=40, seed=0, popsize=6)
    assert len(values) == 40
    assert values[0] == synthetic(SPACE.x0())
    curve = best_so_far(values)
    assert curve[-1] is not None and curve[0] is not None and curve[-1] > curve[0]
    again = run_cmaes(SPACE, synthetic, variant=variant, n_trials=40, seed=0, popsize=6)
    assert again == values  # seeded: the same run twice


def test_failed_candidates_are_ranked_last_and_the_run_goes_on():
    values = run_cmaes(SPACE, lambda x: None, variant="margin", n_trials=9, seed=1, popsize=4)
    assert values == [None] * 9 and best_so_far(values) == [None] * 9


def test_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="variant: must be one of"):
        run_cmaes(SPACE, synthetic, variant="tpe", n_trials=2, seed=0)


def test_plot_path_draws_a_png(tmp_path: Path):
    x = SPACE.x0()
    x[[2, 5]] = 0.9
    out = tmp_path / "path.png"
    plot_path(SPACE.decode(x), {"/m/a": "a", "/m/b": "b"}, out, "test path")
    assert out.stat().st_size > 1000
