"""`space.x0=grid`: score a coarse uniform grid first, then start CMA-ES at its best point.

The grid is uniform merges of the space's method: every layer group gets the same weight per
source model (each source its own value from GRID_WEIGHTS) and the same density
(GRID_DENSITIES) where the method has one. Its points are the study's first trials (enqueued,
scored with the run's estimator; with `estimator=irt` they are its calibration: a spread of
abilities); while any of them is unfinished, new trials take only grid points (a worker with
none left waits). Once all are finished, the best one's genome is stored as the study user
attribute `GRID_X0` and every worker's sampler restarts from it (the grid trials carry no
CMA-ES state, so the sampler's first generation is its own).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np
import optuna
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from evomerge.errors import ConfigError
from evomerge.genome import GenomeSpace
from evomerge.genome.ps import PSSpace

GRID_X0 = "grid_x0"  # study user attr: the best grid point (name -> box value)
GRID_SIZE = "grid_size"  # study user attr: how many of the first trials are grid points
# Per-source weights: the toy's good uniform merges weigh sources 0.75-1.5 (results/history.md,
# toy grid). Densities: the default's half, and no drop. 3 x 3 x 2 = 18 points for two sources.
GRID_WEIGHTS = (0.5, 1.0, 1.5)
GRID_DENSITIES = (0.5, 1.0)
GRID_WAIT_S = 1.0  # a worker with no grid point left polls this often for the others' results


def grid_points(ps: GenomeSpace) -> list[dict[str, float]]:
    """The coarse uniform grid as box points (name -> value in [0, 1])."""
    if not isinstance(ps, PSSpace):
        raise ConfigError("space.x0: grid needs a parameter space (space=ps)")
    params = (*ps.parameter_names, *ps.group_parameter_names)
    densities = GRID_DENSITIES if set(params) - {"weight"} else (1.0,)
    lo, hi = ps.range_of("weight") if "weight" in params else (0.0, 2.0)
    weights = [w for w in GRID_WEIGHTS if lo <= w <= hi] or [ps.x0_weight]
    points = []
    combos = itertools.product(itertools.product(weights, repeat=len(ps.model_names)), densities)
    for ws, d in combos:
        per_model = dict(zip(ps.model_names, ws, strict=True))
        point = {}
        for name, model, param in ps.coordinates:
            value = per_model.get(model or "", 1.0) if param == "weight" else d
            low, high = ps.range_of(param)
            point[name] = float(np.clip((value - low) / (high - low), 0.0, 1.0))
        points.append(point)
    return points


class GridStart:
    """The grid phase of one worker: which sampler to use before each candidate."""

    def __init__(self, names: tuple[str, ...], make: Callable[[np.ndarray], BaseSampler]) -> None:
        self.names = names
        self.make = make  # x0 -> the run's sampler
        self.done = False

    def before_candidate(self, study: optuna.Study) -> bool:
        """Set the study's sampler for the next candidate; False (after a short wait) while
        every grid point is taken and some are still being scored elsewhere."""
        if self.done:
            return True
        if GRID_SIZE not in study.user_attrs:  # no grid in this run
            self.done = True
            return True
        stored = study.user_attrs.get(GRID_X0)
        if stored is None:
            stored = grid_best(study)
            if stored is None:
                # only enqueued grid points are taken now; their parameters are fixed
                study.sampler = optuna.samplers.RandomSampler()
                if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    return True
                time.sleep(GRID_WAIT_S)
                return False
            study.set_user_attr(GRID_X0, stored)
        study.sampler = self.make(np.array([stored[n] for n in self.names]))
        self.done = True
        return True


def grid_best(study: optuna.Study) -> dict[str, float] | None:
    """The best finished grid trial's genome, once every grid trial has finished."""
    size = int(study.user_attrs.get(GRID_SIZE, 0))
    trials = [t for t in study.get_trials(deepcopy=False) if t.number < size]
    if len(trials) < size or any(not t.state.is_finished() for t in trials):
        return None
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if not done:
        return dict(trials[0].params)
    best = max(done, key=lambda t: (t.values[0], -t.number))
    return dict(best.params)
