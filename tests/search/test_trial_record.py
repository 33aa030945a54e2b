"""One trial record: written by trial_record's writers, read back by TrialRecord.of, and no
other module of the search reads or writes a trial's attributes by their string keys."""

import re
from pathlib import Path

import optuna

from evomerge.search.trial_record import (
    TrialRecord,
    write_candidate,
    write_draw,
    write_failure,
    write_objectives,
    write_scored,
    write_surplus,
)


def test_what_is_written_reads_back():
    study = optuna.create_study()
    scored, failed, surplus = study.ask(), study.ask(), study.ask()
    write_candidate(scored, "abc", "host:1")
    write_scored(
        scored,
        metrics={"t": {"acc": 0.5}},
        times=(0.1, 0.2, 1.5, 1.2),
        items=40,
        tokens=300,
        estimated=True,
        raced=True,
        bits={"t/acc": "0101"},
    )
    write_draw(scored, 3)
    write_objectives(scored, {"fitness": 0.5, "keep": 0.9})
    study.tell(scored, 0.5)
    write_failure(failed, "nan: model.norm.weight")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    write_surplus(surplus)
    study.tell(surplus, state=optuna.trial.TrialState.PRUNED)
    a, b, c = (TrialRecord.of(t) for t in study.get_trials())
    assert a == TrialRecord(
        recipe_sha256="abc",
        worker="host:1",
        metrics={"t": {"acc": 0.5}},
        merge_s=0.1,
        swap_s=0.2,
        eval_s=1.5,
        generate_s=1.2,
        items=40,
        tokens=300,
        estimated=True,
        raced=True,
        bits={"t/acc": "0101"},
        draw=3,
        objectives={"fitness": 0.5, "keep": 0.9},
    )
    assert a.times == (0.1, 0.2, 1.5, 1.2) and not a.failed
    assert b.failed and b.failure == "nan: model.norm.weight" and b.times is None
    assert b.items is None and b.tokens == 0 and not b.estimated
    assert c.surplus and not c.failed


def test_a_scored_trial_without_racing_or_bits_records_neither():
    study = optuna.create_study()
    t = study.ask()
    write_scored(
        t,
        metrics={},
        times=(0, 0, 0, 0),
        items=0,
        tokens=0,
        estimated=False,
        raced=False,
        bits={},
    )
    study.tell(t, 0.0)
    assert set(study.trials[0].user_attrs) == {
        "metrics",
        "merge_s",
        "swap_s",
        "eval_s",
        "generate_s",
        "items",
        "tokens",
        "estimated",
    }


def test_only_the_record_module_touches_a_trials_attributes():
    root = Path(__file__).resolve().parents[2] / "evomerge"
    reach = re.compile(r"(?<!study)\.(user_attrs|set_user_attr)\b")
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for folder in ("search", "evaluate")
        for path in sorted((root / folder).glob("*.py"))
        if path.name != "trial_record.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if reach.search(line)
    ]
    assert offenders == []
