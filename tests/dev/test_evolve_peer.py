from pathlib import Path

import pytest
import yaml

from evomerge_dev.bench.evolve_peer import STAGES, command, evolve_config


def test_config_is_a_valid_mergekit_evolve_config(tmp_path: Path):
    evo_config = pytest.importorskip("mergekit.evo.config")
    text = evolve_config(tmp_path, "toy_mgsm_ja_fit", limit=5)
    config = evo_config.EvolMergeConfiguration.model_validate(yaml.safe_load(text))
    assert config.genome.merge_method == "dare_ties"
    assert config.tasks[0].name == "toy_mgsm_ja_fit" and config.limit == 5


def test_only_the_fake_gpu_stage_asks_for_a_gpu(tmp_path: Path):
    for stage in STAGES:
        cmd = command(stage, tmp_path / "c.yaml", tmp_path / "s", tmp_path / "tasks", 4)
        assert "--no-merge-cuda" in cmd
        assert ("--num-gpus" in cmd) == (stage == "fake_gpu")
        assert ("ray.init(num_gpus=1" in " ".join(cmd)) == (stage == "fake_gpu")
