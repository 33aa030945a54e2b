"""`evaluate(backend, tasks) -> {task: {metric: value}}` with the candidate guards around it."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from evomerge.evaluate.backends import Backend
from evomerge.evaluate.fitness import Results
from evomerge.evaluate.guard import CandidateFailed, is_oom
from evomerge.evaluate.objectives import GEN_TOKENS
from evomerge.evaluate.prepared import DocSubset, ItemValues, run_requests
from evomerge.evaluate.tasks import TaskSet


@dataclass
class Evaluation:
    """Scores, and where the time went: `seconds` in all, `generate_seconds` of it inside the
    model's generation/scoring calls (the rest is lm-eval's request and metric bookkeeping)."""

    results: Results
    seconds: float
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    generate_seconds: float = 0.0
    item_ids: dict[str, list[int]] = field(default_factory=dict)  # documents scored, per task
    item_values: ItemValues = field(default_factory=dict)  # per-document metric values
    tokens: int = 0  # tokens generated, all tasks together

    @property
    def items(self) -> int:
        """Documents generated (and scored), all tasks together."""
        return sum(len(ids) for ids in self.item_ids.values())


def evaluate(
    backend: Backend, tasks: TaskSet, *, log_samples: bool = False, only: DocSubset | None = None
) -> Evaluation:
    """Score the backend's current weights on the prepared tasks (with `only`: on those
    documents of the tasks it names; see prepared.run_requests).

    Raises CandidateFailed (an EvaluationError with `.reason` nan / oom / timeout); the backend
    stays usable for the next candidate.
    """
    s = backend.settings
    guard = backend.guard()
    armed = guard.armed(s.timeout_s) if guard is not None else contextlib.nullcontext()
    lm_eval_logger = logging.getLogger("lm_eval")
    if lm_eval_logger.level != logging.WARNING:  # setLevel clears every logger's cache
        lm_eval_logger.setLevel(logging.WARNING)
    t0 = time.perf_counter()
    try:
        with armed, torch.inference_mode():
            run = run_requests(backend.lm, tasks, s, log_samples=log_samples, only=only)
    except CandidateFailed:
        raise
    except Exception as e:
        if is_oom(e):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise CandidateFailed("oom", str(e).splitlines()[0]) from e
        raise
    seconds = time.perf_counter() - t0
    results = {name: _metrics(run.results.get(name, {})) for name in tasks.tasks}
    for name, mean_tokens in run.gen_tokens.items():
        results[name][GEN_TOKENS] = mean_tokens  # an objective may minimize reasoning length
    return Evaluation(
        results,
        seconds,
        run.samples if log_samples else {},
        run.model_seconds,
        run.item_ids,
        run.item_values,
        run.tokens,
    )


NOT_METRICS = ("alias", "sample_len", "sample_count")


def _metrics(raw: dict[str, Any]) -> dict[str, float]:
    """lm-eval's `{"acc,none": 0.3, "acc_stderr,none": "N/A", "alias": ...}` -> `{"acc": 0.3}`.

    A task with one filter reports its metrics by plain name (`acc`, whatever the filter is
    called); with several filters the names keep the filter: `exact_match,strict-match`.
    """
    values = {
        key: float(value)
        for key, value in raw.items()
        if key not in NOT_METRICS and "_stderr," not in key and isinstance(value, int | float)
    }
    filters = {key.partition(",")[2] for key in values}
    out: dict[str, float] = {}
    for key, v in values.items():
        name = key.partition(",")[0] if len(filters) == 1 else key
        out[name] = v if math.isfinite(v) else float("nan")
    return out
