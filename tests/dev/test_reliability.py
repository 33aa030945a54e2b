"""SIGKILL at random moments: a search resumes with nothing lost; a merge is all or nothing.

The merge check runs in the default suite (two kills); the search checks start several search
processes each and are marked slow; scripts/reliability.py runs both at full strength (20
search kills, 10 merge kills).
"""

from pathlib import Path

import pytest

from evomerge_dev.reliability import kill_merges, kill_search, ties_recipe

SEARCH = [
    "models.toy_size=small",
    "optimizer=pycma",  # replays its generations from the seed: resume-exact (see README)
    "optimizer.population_size=4",
    "evaluator.limit=40",
    "evaluator.batch_size=40",
    "threads=1",
    "heartbeat_s=1",
    "score_test=false",
]


def check_merges(tmp_path: Path, kills: int) -> None:
    work = tmp_path / "work"
    work.mkdir()
    r = kill_merges(
        ties_recipe(tmp_path, num_layers=4, hidden_size=64, shards=2),
        work,
        kills=kills,
        seed=1,
        extra=["--shard-size", "50KB"],
    )
    assert r.kills == kills and r.half_written == 0
    assert r.absent + r.complete == kills


def check_search(tmp_path: Path, kills: int, budget: int) -> None:
    r = kill_search(tmp_path, SEARCH, budget=budget, kills=kills, seed=3)
    assert r.kills == kills
    assert r.completed_lost == 0 and r.counted == budget
    assert r.same_best, (r.reference_best, r.killed_best)


def test_merge_killed_at_random_moments_is_absent_or_complete(tmp_path):
    check_merges(tmp_path, kills=2)


@pytest.mark.slow  # ~30 s idle (three processes); the default suite has test_search's kill -9
def test_search_killed_and_resumed_equals_the_uninterrupted_run(toy_cache, tmp_path):
    check_search(tmp_path, kills=1, budget=8)


@pytest.mark.slow
def test_merge_killed_ten_times(tmp_path):
    check_merges(tmp_path, kills=10)


@pytest.mark.slow
def test_search_killed_twenty_times(toy_cache, tmp_path):
    check_search(tmp_path, kills=20, budget=48)
