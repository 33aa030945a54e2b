"""The HF backend: one live model, weights replaced in place, guards for broken candidates."""

from pathlib import Path

import pytest
import torch

from evomerge.errors import EvaluationError
from evomerge.evaluate import CandidateFailed, EvalSettings, HFBackend, evaluate, load_tasks

SETTINGS = EvalSettings(batch_size=8)
FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"


@pytest.fixture(scope="module")
def tasks():
    return load_tasks(["tiny_digits"], SETTINGS, extra_paths=[FIXTURE_TASKS])


def responses(backend, tasks):
    out = evaluate(backend, tasks, log_samples=True)
    return out.results, [s["resps"] for s in out.samples["tiny_digits"]]


def test_results_have_the_documented_shape(tiny_models, tasks):
    out = evaluate(HFBackend.from_pretrained(tiny_models[0], SETTINGS), tasks)
    assert set(out.results) == {"tiny_digits"}
    assert set(out.results["tiny_digits"]) == {"exact_match", "gen_tokens"}
    assert 0.0 <= out.results["tiny_digits"]["exact_match"] <= 1.0
    assert 0 < out.generate_seconds < out.seconds


def test_generation_time_is_the_time_inside_the_model_calls(tiny_models, tasks):
    import time

    backend = HFBackend.from_pretrained(tiny_models[0], SETTINGS)
    plain = evaluate(backend, tasks)
    own = backend.lm.generate_until

    def slow(requests, **kwargs):
        time.sleep(0.3)
        return own(requests, **kwargs)

    backend.lm.generate_until = slow
    slowed = evaluate(backend, tasks)
    assert slowed.results == plain.results
    assert slowed.generate_seconds >= 0.3
    # the sleep is counted as generation, not as what is around it
    assert slowed.seconds - slowed.generate_seconds < 0.3


def test_weights_swapped_in_place_score_like_a_fresh_load(tiny_models, tasks):
    a, b = tiny_models
    live = HFBackend.from_pretrained(a, SETTINGS)
    before = responses(live, tasks)
    model_id = id(live.model)
    fresh_b = HFBackend.from_pretrained(b, SETTINGS)
    with torch.no_grad():
        for name, t in live.model.state_dict().items():
            t.copy_(fresh_b.model.state_dict()[name])
    live.commit_weights()
    swapped = responses(live, tasks)
    assert id(live.model) == model_id
    assert swapped == responses(fresh_b, tasks)
    assert swapped[1] != before[1]  # the two random models answer differently


def test_unknown_task_suggests_close_names():
    with pytest.raises(
        EvaluationError, match=r"unknown task 'tiny_digit'; did you mean tiny_digits"
    ):
        load_tasks(["tiny_digit"], SETTINGS, extra_paths=[FIXTURE_TASKS])


def test_nan_weights_fail_the_candidate_and_name_the_tensor(tiny_models, tasks):
    live = HFBackend.from_pretrained(tiny_models[0], SETTINGS)
    good = {k: v.clone() for k, v in live.model.state_dict().items()}
    with torch.no_grad():
        live.model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(CandidateFailed, match=r"model\.layers\.1\.mlp\.down_proj\.weight") as e:
        live.commit_weights()
    assert e.value.reason == "nan"
    live.model.load_state_dict(good)
    live.commit_weights()
    assert "tiny_digits" in evaluate(live, tasks).results


def test_weights_the_merge_checked_are_not_checked_again(tiny_models):
    live = HFBackend.from_pretrained(tiny_models[0], SETTINGS)
    names = set(live.model.state_dict())
    with torch.no_grad():
        live.model.model.norm.weight[0] = float("inf")
    live.commit_weights(finite=names)  # trusted: the merge core checked them
    with pytest.raises(CandidateFailed, match=r"model\.norm\.weight"):
        live.commit_weights(finite=names - {"model.norm.weight"})


def test_non_finite_logits_fail_then_the_model_recovers(tiny_models, tasks):
    live = HFBackend.from_pretrained(tiny_models[0], SETTINGS)
    expected = responses(live, tasks)
    head = live.model.lm_head.weight
    saved = head.detach().clone()
    with torch.no_grad():
        head.fill_(3e38)  # finite weights; the logits overflow to inf
    live.commit_weights()
    with pytest.raises(CandidateFailed) as e:
        evaluate(live, tasks)
    assert e.value.reason == "nan"
    with torch.no_grad():
        head.copy_(saved)
    assert responses(live, tasks) == expected


def test_timeout_fails_the_candidate_and_the_next_one_runs(tiny_models, tasks):
    slow = HFBackend.from_pretrained(tiny_models[0], EvalSettings(batch_size=8, timeout_s=1e-9))
    with pytest.raises(CandidateFailed) as e:
        evaluate(slow, tasks)
    assert e.value.reason == "timeout"
    assert slow.guard().deadline is None
    slow.settings = SETTINGS
    assert "tiny_digits" in evaluate(slow, tasks).results


def test_out_of_memory_becomes_a_failed_candidate(tiny_models, tasks):
    live = HFBackend.from_pretrained(tiny_models[0], SETTINGS)
    calls = {"n": 0}

    def oom_once(module, args, output):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = live.model.model.layers[0].register_forward_hook(oom_once)
    with pytest.raises(CandidateFailed) as e:
        evaluate(live, tasks)
    assert e.value.reason == "oom"
    assert "tiny_digits" in evaluate(live, tasks).results
    handle.remove()
