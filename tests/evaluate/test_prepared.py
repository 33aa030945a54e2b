"""Requests built once give exactly what lm-eval's own evaluate() gives, candidate after candidate."""

import pytest
import torch
from lm_eval.evaluator import evaluate as lm_evaluate

from evomerge.evaluate import EvalSettings, HFBackend, evaluate, load_tasks
from evomerge.evaluate.runner import _metrics
from evomerge.toy import ensure_family


def reference(backend, tasks, settings):
    out = lm_evaluate(
        lm=backend.lm,
        task_dict=tasks.task_dict,
        limit=settings.limit,
        bootstrap_iters=0,
        log_samples=False,
    )
    return {name: _metrics(out["results"][name]) for name in tasks.tasks}


@pytest.mark.parametrize("limit", [None, 30])
def test_toy_tasks_match_lm_eval_across_weight_swaps(toy_cache, limit):
    family = ensure_family(size="small", cache_dir=toy_cache)
    settings = EvalSettings(batch_size=64, limit=limit)
    tasks = load_tasks(["toy_mgsm_ja_fit", "toy_math_en", "toy_lang_ja"], settings)
    backend = HFBackend.from_pretrained(family.base, settings)
    for member in ("base", "math_en", "lang_ja"):
        source = HFBackend.from_pretrained(family.path(member), settings).model.state_dict()
        with torch.no_grad():
            for name, t in backend.model.state_dict().items():
                t.copy_(source[name])
        ours = evaluate(backend, tasks).results
        tokens = {name: metrics.pop("gen_tokens") for name, metrics in ours.items()}
        assert ours == reference(backend, tasks, settings)
        assert set(ours["toy_mgsm_ja_fit"]) == {"acc", "correct", "ja"}
        assert all(0 < n <= 8 for n in tokens.values())  # the toy tasks' max_gen_toks


def test_the_private_instances_list_that_restricted_swaps_is_lm_evals():
    """evaluate/prepared.py's `restricted` swaps lm-eval's private `task._instances` so that
    the task's filters run over the generated requests only. This pins that reach to the
    installed lm-eval: the filters and `instances` read that attribute, and the swap is undone."""
    import inspect

    from lm_eval.api.task import Task

    from evomerge.evaluate.prepared import restricted

    assert "self._instances" in inspect.getsource(Task.apply_filters)
    assert "self._instances" in inspect.getsource(Task.instances.fget)
    tasks = load_tasks(["toy_mgsm_ja_fit"], EvalSettings(limit=4))
    task = tasks.tasks["toy_mgsm_ja_fit"]
    task.build_all_requests(limit=4, rank=0, world_size=1)
    every = list(task.instances)
    assert len(every) == 4
    every[0].resps.append("二")  # one request generated, the other three not
    with pytest.raises(IndexError):
        task.apply_filters()  # over every request: the ungenerated ones have no response
    with restricted(task, every[:1]):
        assert task.instances == every[:1]
        task.apply_filters()  # over the generated one only
    assert task.instances == every
    assert every[0].filtered_resps and not every[1].filtered_resps
