import random
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from evomerge.toy.data import (
    FIT_SIZE,
    SKILLS,
    TEST_SIZE,
    make_splits,
    parse_body,
    read_answer,
    sample_mix,
    successor_example,
    sum21_bodies,
    write_number,
)
from evomerge.toy.family import BASE_MIX, SPECIALISTS
from evomerge.toy.tasks import TASK_SPECS, write_task_data

REPO = Path(__file__).resolve().parents[2]


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["en", "ja"]))
def test_write_then_read_number_round_trips(n: int, script: str) -> None:
    assert read_answer(write_number(n, script) + ".") == (n, script)


def test_read_answer_rejects_mixed_or_empty() -> None:
    assert read_answer("1九.") == (None, None)
    assert read_answer("") == (None, None)
    assert read_answer(" 一九 ") == (19, "ja")


def test_successor_writes_the_computed_value_in_the_modes_script() -> None:
    ex = successor_example("J", 39)
    assert (ex.prompt, ex.answer, ex.value, ex.script) == ("JS39=", "四〇.", 40, "ja")
    assert successor_example("E", 39).answer == "40."
    rng = random.Random(0)
    for mode in ("E", "J"):
        assert all(10 <= SKILLS[f"{mode}_succ"](rng).value <= 99 for _ in range(200))


def test_splits_are_disjoint_and_sized() -> None:
    s = make_splits()
    assert len(set(s.sum_test)) == TEST_SIZE and len(set(s.sum_fit)) == FIT_SIZE
    assert not set(s.sum_test) & set(s.sum_fit)
    assert len(set(s.max_test)) == TEST_SIZE
    assert set(s.sum_test) | set(s.sum_fit) <= set(sum21_bodies())
    assert make_splits() == s  # deterministic


def test_training_streams_never_yield_heldout_bodies() -> None:
    heldout = make_splits().heldout
    mixes = [BASE_MIX, *(spec.mix for spec in SPECIALISTS)]
    for mix in mixes:
        stream = sample_mix(random.Random(0), mix, heldout)
        assert not any(next(stream).body in heldout for _ in range(3000))


def test_no_training_mix_contains_the_target() -> None:
    for mix in [BASE_MIX, *(spec.mix for spec in SPECIALISTS)]:
        assert not any(name.startswith("J_add") for name in mix)


def test_every_skill_rebuilds_from_its_body() -> None:
    rng = random.Random(1)
    for name, gen in SKILLS.items():
        ex = gen(rng)
        if "add" in name or "max" in name:
            assert parse_body(ex.prompt[0], ex.body) == ex


def test_bundled_task_data_is_current(tmp_path: Path) -> None:
    written = write_task_data(tmp_path)
    assert [p.stem for p in written] == list(TASK_SPECS)
    for path in written:
        bundled = REPO / "tasks" / "toy" / "data" / path.name
        assert bundled.read_bytes() == path.read_bytes(), f"regenerate {bundled}"
