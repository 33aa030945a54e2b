import json
import subprocess
import sys
from pathlib import Path

FIXTURE_TASKS = Path(__file__).parent / "fixtures" / "tasks"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evomerge", "eval", *args], capture_output=True, text=True
    )


def scores(model, out: Path) -> dict:
    """`eval model=...` on the fixture task through the command; the scores it wrote."""
    common = ["task=tiny_digits", f"include=[{FIXTURE_TASKS}]", "evaluator.batch_size=8"]
    r = run(f"model={model}", f"output={out}", *common)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())


def test_eval_prints_a_table_and_writes_json(tiny_models, tmp_path):
    out = tmp_path / "scores.json"
    r = run(
        f"model={tiny_models[0]}",
        "task=tiny_digits",
        "limit=5",
        f"include=[{FIXTURE_TASKS}]",
        f"output={out}",
        "evaluator.batch_size=4",
    )
    assert r.returncode == 0, r.stderr
    assert "tiny_digits" in r.stdout and "exact_match" in r.stdout
    data = json.loads(out.read_text())
    assert set(data) == {"tiny_digits"}
    assert 0.0 <= data["tiny_digits"]["exact_match"] <= 1.0


def test_eval_bad_input_exits_2_with_a_message(tiny_models):
    r = run(f"model={tiny_models[0]}", "task=no_such_task")
    assert r.returncode == 2
    assert "unknown task 'no_such_task'" in r.stderr
    r = run("task=tiny_digits")
    assert r.returncode == 2 and "model= is required" in r.stderr
    r = run(
        f"model={tiny_models[0]}",
        "task=tiny_digits",
        "evaluator.batch_size=0",
        f"include=[{FIXTURE_TASKS}]",
    )
    assert r.returncode == 2 and "evaluator.batch_size: must be >= 1" in r.stderr


def test_eval_of_a_recipe_merges_it_first(tiny_models, tmp_path):
    a, b = tiny_models
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "merge_method: linear\n"
        f"models:\n  - model: {a}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.0}}\n"
    )
    assert scores(recipe, tmp_path / "merged.json") == scores(a, tmp_path / "plain.json")


def test_eval_of_a_multi_stage_recipe_merges_every_stage(tiny_models, tmp_path):
    a, b = tiny_models
    recipe = tmp_path / "stages.yaml"
    recipe.write_text(
        "name: first\nmerge_method: linear\n"
        f"models:\n  - model: {a}\n    parameters: {{weight: 0.0}}\n"
        f"  - model: {b}\n    parameters: {{weight: 1.0}}\n"
        "---\nmerge_method: linear\n"
        f"models:\n  - model: first\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {a}\n    parameters: {{weight: 0.0}}\n"
    )
    assert scores(recipe, tmp_path / "staged.json") == scores(b, tmp_path / "plain.json")
