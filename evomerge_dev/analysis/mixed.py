"""CMA-ES for the data-flow genome's mixed binary / continuous box, on cmaes' ask/tell.

Two variants at the same budget (scripts/dfs_optimizers.py compares them):
- `relaxed`: plain CMA-ES over [0, 1]^D; a slot is on iff its coordinate is above 0.5
  (the paper's method; the same algorithm as the search's Optuna CmaEsSampler).
- `margin`: CMA-ES with Margin (Hamano et al., GECCO 2022; `cmaes.CMAwM`): the slot indicators
  are binary variables (step 1 on [0, 1]) and the margin keeps each one's probability of
  flipping above a floor, so the covariance cannot collapse an indicator onto one side.

Both start at the space's x0 with the same sigma0 and population size, evaluate x0 first (as a
search does), and tell failed candidates (e.g. an empty path) the worst fitness, 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from cmaes import CMA, CMAwM

from evomerge.errors import ConfigError
from evomerge.genome.dfs import DFSSpace

VARIANTS = ("relaxed", "margin")
Score = Callable[[np.ndarray], float | None]  # None: a failed candidate


def run_cmaes(
    space: DFSSpace,
    score: Score,
    *,
    variant: str,
    n_trials: int,
    seed: int,
    sigma0: float = 0.15,
    popsize: int | None = None,
) -> list[float | None]:
    """Fitness of each of the `n_trials` candidates in evaluation order (x0 first)."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant: must be one of {VARIANTS}, got {variant!r}")
    bounds = np.tile([0.0, 1.0], (space.dim, 1))
    binary = np.array([n.startswith("slot.") for n in space.names])
    if variant == "margin":
        steps = np.where(binary, 1.0, 0.0)
        opt: CMA | CMAwM = CMAwM(
            mean=space.x0(), sigma=sigma0, bounds=bounds, steps=steps, seed=seed,
            population_size=popsize,
        )  # fmt: skip
    else:
        opt = CMA(mean=space.x0(), sigma=sigma0, bounds=bounds, seed=seed, population_size=popsize)
    values = [score(space.x0())]
    while len(values) < n_trials:
        told = []
        for _ in range(opt.population_size):
            x_eval, x_tell = _ask(opt)
            value = score(x_eval)
            values.append(value)
            told.append((x_tell, -(value or 0.0)))  # cmaes minimizes
            if len(values) == n_trials:
                break
        if len(told) == opt.population_size:
            opt.tell(told)
    return values


def _ask(opt: CMA | CMAwM) -> tuple[np.ndarray, np.ndarray]:
    """(point to evaluate, point to tell): CMAwM evaluates the discretized point."""
    if isinstance(opt, CMAwM):
        x_eval, x_tell = opt.ask()
        return x_eval, x_tell
    x = opt.ask()
    return x, x


def best_so_far(values: list[float | None]) -> list[float | None]:
    out: list[float | None] = []
    best: float | None = None
    for v in values:
        if v is not None and (best is None or v > best):
            best = v
        out.append(best)
    return out
