"""lm-eval's evaluation loop over requests built once.

`lm_eval.evaluator.evaluate` rebuilds every task's requests (prompt rendering, few-shot
contexts) on each call: about a millisecond per document, more than generating the toy's
answers. A search scores the same documents hundreds of times, so the requests are built once
per task set and each candidate only clears the responses, runs the model, applies the task's
filters and metrics, and aggregates them as lm-eval does (tests check equality with
`lm_eval.evaluator.evaluate`). Leaf tasks only: groups are reported through their tasks.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from evomerge.evaluate.settings import EvalSettings
from evomerge.evaluate.tasks import TaskSet

RawResults = dict[str, dict[str, float]]  # task -> {"metric,filter": value}


def build_requests(lm: Any, tasks: TaskSet, settings: EvalSettings) -> None:
    """Build every task's requests for this model wrapper and settings, once."""
    key = (id(lm), settings.limit, settings.apply_chat_template)
    if tasks.built_for == key:
        return
    for task in tasks.tasks.values():
        task.build_all_requests(
            limit=settings.limit,
            rank=0,
            world_size=1,
            apply_chat_template=settings.apply_chat_template,
            chat_template=getattr(lm, "apply_chat_template", None)
            if settings.apply_chat_template
            else None,
            tokenizer_name=getattr(lm, "tokenizer_name", "")
            if settings.apply_chat_template
            else "",
        )
    tasks.built_for = key


def run_requests(
    lm: Any, tasks: TaskSet, settings: EvalSettings, *, log_samples: bool = False
) -> tuple[RawResults, dict[str, list[dict[str, Any]]]]:
    """Score the model behind `lm` on the prepared requests: (metrics per task, samples)."""
    build_requests(lm, tasks, settings)
    by_type: dict[str, list[Any]] = defaultdict(list)
    for task in tasks.tasks.values():
        for inst in task.instances:
            inst.resps.clear()
            inst.filtered_resps.clear()
            by_type[inst.request_type].append(inst)
    for reqtype, reqs in by_type.items():
        cloned = [r for r in reqs for _ in range(r.repeats)]
        for resp, req in zip(getattr(lm, reqtype)(cloned, disable_tqdm=True), cloned, strict=True):
            req.resps.append(resp)
    results: RawResults = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for name, task in tasks.tasks.items():
        results[name], samples[name] = _score_task(task, settings.limit, log_samples)
    return results, samples


def _score_task(
    task: Any, limit: int | None, log_samples: bool
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    from lm_eval.api.metrics import mean

    task.apply_filters()
    by_doc: dict[int, list[Any]] = defaultdict(list)
    for inst in task.instances:
        by_doc[inst.doc_id].append(inst)
    for insts in by_doc.values():
        insts.sort(key=lambda i: i.idx)
    raw: dict[tuple[str, str], list[Any]] = defaultdict(list)
    logged: list[dict[str, Any]] = []
    for filter_key in task.instances[0].filtered_resps:
        for doc_id, doc in task.doc_iterator(rank=0, limit=limit, world_size=1):
            reqs = by_doc[doc_id]
            metrics = task.process_results(doc, [r.filtered_resps[filter_key] for r in reqs])
            for metric, value in metrics.items():
                raw[(metric, filter_key)].append(value)
            if log_samples:
                logged.append(
                    {
                        "doc_id": doc_id,
                        "doc": doc,
                        "filter": filter_key,
                        "resps": [list(r.resps) for r in reqs],
                        "filtered_resps": [r.filtered_resps[filter_key] for r in reqs],
                        **metrics,
                    }
                )
    aggregation = task.aggregation()
    out = {
        f"{metric},{fk}": float(aggregation.get(metric, mean)(values))
        for (metric, fk), values in raw.items()
    }
    return out, logged
