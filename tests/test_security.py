"""Security defaults: no pickle code execution, no remote code, no shell or env in recipes."""

import json
import re
from pathlib import Path

import pytest
import torch

from evomerge.config import compose
from evomerge.errors import EvaluationError, MergeError
from evomerge.evaluate import EvalSettings
from evomerge.evaluate.hf_backend import load_hf_model
from evomerge.merge import MergeOptions, merge_to_disk
from evomerge.merge.cli import build_parser
from evomerge.recipe import load_recipe
from evomerge.search.config import search_config
from evomerge_dev.testing import make_tiny_llama

PACKAGE = Path(__file__).resolve().parents[1] / "evomerge"


class Payload:
    """Unpickling this runs `code` (what a malicious pytorch_model.bin does)."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def pickled_model(tmp_path: Path, marker: Path) -> Path:
    model = make_tiny_llama(tmp_path / "evil", seed=0)
    for f in model.glob("*.safetensors"):
        f.unlink()
    state = {"model.embed_tokens.weight": torch.zeros(64, 32)}
    state["payload"] = Payload(f"open({str(marker)!r}, 'w').close()")  # type: ignore[assignment]
    torch.save(state, model / "pytorch_model.bin")
    return model


def recipe_of(base: Path, other: str) -> str:
    return (
        f"merge_method: linear\nmodels:\n  - model: {base}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: '{other}'\n    parameters: {{weight: 0.5}}\n"
    )


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_a_pickle_that_runs_code_is_refused(tmp_path, allow_pickle):
    marker = tmp_path / "pwned"
    evil = pickled_model(tmp_path, marker)
    base = make_tiny_llama(tmp_path / "base", seed=1)
    recipe = load_recipe(recipe_of(base, str(evil)))
    # by default pickles are not opened at all; with --allow-pickle, only as plain tensors
    message = "can run code" if not allow_pickle else "cannot load pickle checkpoint"
    with pytest.raises(MergeError, match=message):
        merge_to_disk(recipe, tmp_path / "out", MergeOptions(allow_pickle=allow_pickle))
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_the_evaluator_loads_no_pickle_either(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickled_model(tmp_path, marker)
    with pytest.raises(EvaluationError):
        load_hf_model(evil, EvalSettings())
    assert not marker.exists()


def test_remote_code_in_a_checkpoint_is_not_run_by_default(tmp_path):
    marker = tmp_path / "pwned"
    model = make_tiny_llama(tmp_path / "m", seed=0)
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.C", "AutoModelForCausalLM": "evil.M"}
    (model / "config.json").write_text(json.dumps(config))
    loaded, _ = load_hf_model(model, EvalSettings())  # the built-in Llama class, not evil.M
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


def test_trust_remote_code_is_off_unless_asked(tmp_path):
    assert EvalSettings().trust_remote_code is False
    assert MergeOptions().trust_remote_code is False and MergeOptions().allow_pickle is False
    args = build_parser().parse_args(["r.yaml", "out"])
    assert args.trust_remote_code is False and args.allow_pickle is False
    for name in ("hf", "vllm"):
        cfg = search_config(compose("search", [f"evaluator={name}", f"results_dir={tmp_path}"]))
        assert cfg.evaluator.trust_remote_code is False


@pytest.mark.parametrize(
    "ref", ["$EVOMERGE_SECRET_MODEL", "${EVOMERGE_SECRET_MODEL}", "`touch {m}`", "$(touch {m})"]
)
def test_recipe_strings_are_not_expanded_or_run(tmp_path, monkeypatch, ref):
    marker = tmp_path / "pwned"
    real = make_tiny_llama(tmp_path / "real", seed=2)
    monkeypatch.setenv("EVOMERGE_SECRET_MODEL", str(real))
    ref = ref.replace("{m}", str(marker))
    recipe = load_recipe(recipe_of(make_tiny_llama(tmp_path / "base", seed=1), ref))
    assert recipe.models[1].model == ref  # kept as written
    with pytest.raises(MergeError, match=re.escape(repr(ref))):
        merge_to_disk(recipe, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_no_shell_and_no_environment_expansion_in_the_package():
    """A guard: nothing in evomerge/ (test helpers aside) starts a shell or expands $VARS."""
    forbidden = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|expandvars\(")
    hits = [
        f"{p.relative_to(PACKAGE)}:{i + 1}"
        for p in PACKAGE.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines())
        if forbidden.search(line)
    ]
    assert hits == []
