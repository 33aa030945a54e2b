"""Where a candidate's time goes: merge, weight swap, lm-eval bookkeeping, generation.

Generation is the time inside the model wrapper's request calls during the candidate's own
evaluation (timed by the evaluation itself, not by a second pass, which an engine's prefix
cache would make faster than the first).

Used by scripts/bench_search.py. The scorer is built exactly as the search builds it; the
candidates are random genomes of the run's space (seeded).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from evomerge.evaluate import evaluate
from evomerge.search.config import SearchConfig
from evomerge.search.scorer import make_scorer
from evomerge.search.space import build_space


def measure_overhead(cfg: SearchConfig, candidates: int = 20, seed: int = 0) -> dict[str, Any]:
    """Seconds of one-off setup and, per candidate, of each stage (medians over candidates)."""
    t0 = time.perf_counter()
    space = build_space(cfg)
    t1 = time.perf_counter()
    scorer = make_scorer(
        space.template_model, cfg.evaluator, cfg.task, merge_on=cfg.merge_on, seed=cfg.seed
    )
    _ = scorer.backend.lm  # the lm-eval model wrapper is built once, on first use
    t2 = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(candidates):
        recipe = space.decode(rng.random(len(space.names)))
        merge_s, swap_s = scorer.load(recipe)
        ev = evaluate(scorer.backend, scorer.tasks)
        rows.append(
            {"merge": merge_s, "swap": swap_s, "eval": ev.seconds, "generate": ev.generate_seconds}
        )
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    candidate = med["merge"] + med["swap"] + med["eval"]
    bookkeeping = max(med["eval"] - med["generate"], 0.0)
    return {
        "setup_space_s": t1 - t0,
        "setup_scorer_s": t2 - t1,
        "candidates": candidates,
        "median_merge_s": med["merge"],
        "median_swap_s": med["swap"],
        "median_lm_eval_bookkeeping_s": bookkeeping,
        "median_generation_s": med["generate"],
        "median_candidate_s": candidate,
        "overhead_share": (med["merge"] + med["swap"] + bookkeeping) / candidate,
        "candidates_per_hour": 3600.0 / candidate,
        "documents": sum(len(t.instances) for t in scorer.tasks.tasks.values()),
    }
