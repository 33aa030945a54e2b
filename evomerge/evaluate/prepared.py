"""lm-eval's evaluation loop over requests built once.

`lm_eval.evaluator.evaluate` rebuilds every task's requests (prompt rendering, few-shot
contexts) on each call: about a millisecond per document, more than generating the toy's
answers. A search scores the same documents hundreds of times, so the requests are built once
per task set and each candidate only clears the responses, runs the model, applies the task's
filters and metrics, and aggregates them as lm-eval does (tests check equality with
`lm_eval.evaluator.evaluate`). Leaf tasks only: groups are reported through their tasks.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from evomerge.evaluate.settings import EvalSettings
from evomerge.evaluate.tasks import TaskSet

RawResults = dict[str, dict[str, float]]  # task -> {"metric,filter": value}
# task -> "metric,filter" -> one value per scored document, in the order of Run.item_ids[task]
ItemValues = dict[str, dict[str, list[float]]]
DocSubset = Mapping[str, Collection[int]]  # task -> the doc ids to generate (others skipped)


@dataclass
class Run:
    """One pass over the prepared requests.

    model_seconds: time inside the model wrapper's request calls (generate_until,
    loglikelihood, ...): generation and scoring proper; the rest of the pass is lm-eval's
    bookkeeping (filters, metrics, aggregation).
    """

    results: RawResults
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    model_seconds: float = 0.0
    gen_tokens: dict[str, float] = field(default_factory=dict)  # task -> mean generated tokens
    item_ids: dict[str, list[int]] = field(default_factory=dict)  # scored doc ids per task
    item_values: ItemValues = field(default_factory=dict)
    tokens: int = 0  # tokens of all generated continuations (cut at the stop sequence)


def build_requests(lm: Any, tasks: TaskSet, settings: EvalSettings) -> None:
    """Build every task's requests for this model wrapper and settings, once."""
    key = (id(lm), settings.limit, settings.apply_chat_template)
    if tasks.built_for == key:
        return
    for name, task in tasks.tasks.items():
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
        tasks.docs[name] = list(task.doc_iterator(rank=0, limit=settings.limit, world_size=1))
    tasks.built_for = key


def run_requests(
    lm: Any,
    tasks: TaskSet,
    settings: EvalSettings,
    *,
    log_samples: bool = False,
    only: DocSubset | None = None,
) -> Run:
    """Score the model behind `lm` on the prepared requests; with `only`, on those documents
    of the tasks it names (a task it leaves out is scored in full): the others are neither
    generated nor scored, so the aggregate metrics are over the subset."""
    build_requests(lm, tasks, settings)
    by_type: dict[str, list[Any]] = defaultdict(list)
    chosen: dict[str, list[Any]] = {}
    for name, task in tasks.tasks.items():
        keep = None if only is None or name not in only else set(only[name])
        chosen[name] = [i for i in task.instances if keep is None or i.doc_id in keep]
        for inst in task.instances:
            inst.resps.clear()
            inst.filtered_resps.clear()
        for inst in chosen[name]:
            by_type[inst.request_type].append(inst)
    run = Run(results={})
    for reqtype, reqs in by_type.items():
        cloned = [r for r in reqs for _ in range(r.repeats)]
        t0 = time.perf_counter()
        resps = getattr(lm, reqtype)(cloned, disable_tqdm=True)
        run.model_seconds += time.perf_counter() - t0
        for resp, req in zip(resps, cloned, strict=True):
            req.resps.append(resp)
    for name, task in tasks.tasks.items():
        docs = tasks.docs[name]
        if only is not None and name in only:
            keep = set(only[name])
            docs = [(i, d) for i, d in docs if i in keep]
        with restricted(task, chosen[name]):
            run.results[name], run.samples[name], run.item_values[name] = _score_task(
                task, docs, log_samples
            )
        run.item_ids[name] = [i for i, _ in docs]
        texts = [r for i in chosen[name] if i.request_type == "generate_until" for r in i.resps]
        if texts:
            tokens = count_tokens(lm, texts)
            run.tokens += tokens
            run.gen_tokens[name] = tokens / len(texts)
    return run


@contextmanager
def restricted(task: Any, instances: list[Any]) -> Iterator[None]:
    """The task's filters run over `instances` only: lm-eval applies them to all its requests,
    and a request that was not generated has no response to filter."""
    every = task._instances
    task._instances = instances
    try:
        yield
    finally:
        task._instances = every


def count_tokens(lm: Any, texts: list[str]) -> int:
    """Tokens in the generated continuations (as returned: cut at the stop sequence), counted
    with the model's tokenizer; one batched call where the wrapper exposes a fast tokenizer."""
    tokenizer = getattr(lm, "tokenizer", None)
    if callable(tokenizer):
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return sum(len(x) for x in ids)
    return sum(len(lm.tok_encode(t)) for t in texts)


def _score_task(
    task: Any, docs: list[tuple[int, Any]], log_samples: bool
) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, list[float]]]:
    from lm_eval.api.metrics import mean

    if not task.instances:  # a subset with none of this task's documents
        return {}, [], {}
    task.apply_filters()
    by_doc: dict[int, list[Any]] = defaultdict(list)
    for inst in task.instances:
        by_doc[inst.doc_id].append(inst)
    for insts in by_doc.values():
        insts.sort(key=lambda i: i.idx)
    raw: dict[tuple[str, str], list[Any]] = defaultdict(list)
    logged: list[dict[str, Any]] = []
    for filter_key in task.instances[0].filtered_resps:
        for doc_id, doc in docs:
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
    per_item = {f"{metric},{fk}": [_number(v) for v in vs] for (metric, fk), vs in raw.items()}
    return out, logged, per_item


def _number(value: Any) -> float:
    """A per-item metric value as a float (NaN where it is no number, e.g. a BLEU tuple)."""
    return float(value) if isinstance(value, int | float) else float("nan")
