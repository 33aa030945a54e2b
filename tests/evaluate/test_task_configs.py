"""The search's task configs point at tasks that exist, with the metrics their fitness names."""

from pathlib import Path

import pytest

from evomerge.config import CONFIG_DIR, compose
from evomerge.evaluate.objectives import parse_objectives
from evomerge.evaluate.tasks import make_task_manager

TASK_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))


@pytest.mark.parametrize("name", TASK_CONFIGS)
def test_every_task_config_names_indexed_tasks(name):
    cfg = compose("search", [f"task={name}"])["task"]
    objectives = parse_objectives(cfg)  # task.fitness, or task.objectives and constraints
    names = [*objectives.tasks, *cfg["test"]]
    tm = make_task_manager(cfg.get("include") or (), names=names)
    assert set(names) <= set(tm.all_tasks)
    assert not set(objectives.tasks) & set(cfg["test"]), "fitness and test tasks must differ"


def test_mgsm_fitness_task_is_mgsm_ja_on_the_disjoint_gsm8k_problems(tmp_path):
    tm = make_task_manager(names=["mgsm_ja_fit"])
    text = Path(tm.task_index["mgsm_ja_fit"].yaml_path).read_text()
    assert "dataset_path: SakanaAI/gsm8k-ja-test_250-1319" in text
    # offline: the same task on a local file in the dataset's schema prompts like mgsm_ja
    fixture = Path(__file__).parents[1] / "tasks" / "fixtures" / "mgsm_ja_sample.jsonl"
    for name in ("mgsm_ja", "mgsm_ja_fit"):
        (tmp_path / f"{name}_local.yaml").write_text(
            f"include: {tm.task_index[name].yaml_path}\ntask: {name}_local\n"
            f"dataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs: {{data_files: {{test: {fixture}}}}}\n"
        )
    local = make_task_manager([tmp_path], names=["mgsm_ja_local", "mgsm_ja_fit_local"])
    tasks = local.load(["mgsm_ja_local", "mgsm_ja_fit_local"])["tasks"]
    prompts = {
        name: [task.doc_to_text(doc) for doc in task.test_docs()] for name, task in tasks.items()
    }
    assert prompts["mgsm_ja_local"] == prompts["mgsm_ja_fit_local"]
    assert len(prompts["mgsm_ja_local"]) > 0
