"""The vLLM backend on a GPU: pushed candidates answer like a fresh engine (`pytest -m gpu`).

Needs a CUDA device and vLLM; CPU runs cover the push protocol in test_vllm_backend.py.
"""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evomerge.evaluate import EvalSettings, VLLMBackend, evaluate, load_tasks
from evomerge.merge import MergeOptions, merge_into_model, merge_to_disk
from evomerge.recipe import parse_recipe
from evomerge.toy import ensure_family

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
        reason="needs a CUDA device and vLLM",
    ),
]

SETTINGS = EvalSettings(
    backend="vllm", device="cuda", limit=40, max_length=None, gpu_memory_utilization=0.3
)


def responses(backend, tasks, name):
    out = evaluate(backend, tasks, log_samples=True)
    return out.results[name], [s["resps"] for s in out.samples[name]]


# A fresh engine in its own process, on a checkpoint on disk: the oracle for the push.
FRESH_ENGINE = """
import dataclasses, json, sys
from evomerge.evaluate import EvalSettings, VLLMBackend, evaluate, load_tasks
settings = EvalSettings(**json.loads(sys.argv[2]))
out = evaluate(VLLMBackend(sys.argv[1], settings), load_tasks(["toy_mgsm_ja"], settings),
               log_samples=True)
print("RESULT" + json.dumps([out.results["toy_mgsm_ja"],
                             [s["resps"] for s in out.samples["toy_mgsm_ja"]]]))
"""


def fresh_engine_responses(path):
    done = subprocess.run(
        [sys.executable, "-c", FRESH_ENGINE, str(path), json.dumps(dataclasses.asdict(SETTINGS))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def as_json(value):
    return json.loads(json.dumps(value))


def test_pushed_candidate_answers_like_a_fresh_engine_on_its_checkpoint(toy_cache, tmp_path):
    family = ensure_family(size="small", cache_dir=toy_cache)
    tasks = load_tasks(["toy_mgsm_ja"], SETTINGS)
    recipe = parse_recipe(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(family.base),
            "models": [
                {"model": str(path), "parameters": {"weight": 1.0}}
                for path in family.specialists.values()
            ],
            "dtype": "float32",
        }
    )
    live = VLLMBackend(family.path("lang_ja"), SETTINGS)
    before = responses(live, tasks, "toy_mgsm_ja")
    merge_into_model(recipe, live.target, MergeOptions())
    live.commit_weights()
    pushed = responses(live, tasks, "toy_mgsm_ja")
    assert pushed[1] != before[1]  # the push changed what the engine answers
    assert as_json(pushed) == fresh_engine_responses(merge_to_disk(recipe, tmp_path / "merged"))

    own = load_file(family.path("lang_ja") / "model.safetensors")
    live.target.load_state_dict(own)
    live.commit_weights()
    assert responses(live, tasks, "toy_mgsm_ja") == before  # pushing back restores the parent


def test_search_with_the_vllm_evaluator_scores_and_exports(toy_cache, tmp_path):
    overrides = [
        "models.toy_size=small",
        "evaluator=vllm",
        "evaluator.max_length=null",
        "evaluator.gpu_memory_utilization=0.3",
        "evaluator.limit=20",
        "optimizer.n_trials=4",
        "optimizer.population_size=4",
        f"results_dir={tmp_path}",
        "run=v",
    ]
    env = dict(os.environ, EVOMERGE_CACHE=str(toy_cache), TQDM_DISABLE="1")
    done = subprocess.run(
        [sys.executable, "-m", "evomerge", "search", *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = Path(tmp_path) / "v"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trials"] == 4 and summary["failed"] == 0
    assert 0.0 <= summary["fitness"] <= 1.0
    assert "toy_mgsm_ja" in summary["test_metrics"]
    assert (run / "best_recipe.yaml").is_file()
