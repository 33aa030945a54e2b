"""Objectives and constraints: parsing with key paths, values, violations, source shares."""

import pytest

from evomerge.errors import ConfigError
from evomerge.evaluate.objectives import parse_objectives

RESULTS = {
    "fit": {"acc": 0.4, "gen_tokens": 12.0},
    "keep": {"acc": 0.85},
}
TARGET = {"name": "target", "terms": [{"task": "fit", "metric": "acc"}]}
TOKENS = {
    "name": "tokens",
    "direction": "minimize",
    "terms": [{"task": "fit", "metric": "gen_tokens"}],
}


def test_fitness_alone_is_one_maximized_objective():
    o = parse_objectives({"fitness": [{"task": "fit", "metric": "acc", "weight": 2.0}]})
    assert o.names == ["fitness"] and o.directions == ["maximize"]
    assert o.values(RESULTS) == [0.8]
    assert o.constraints == () and o.tasks == ["fit"]


def test_objectives_are_directed_weighted_sums_and_tokens_is_one_of_them():
    o = parse_objectives({"objectives": [TARGET, TOKENS]})
    assert o.names == ["target", "tokens"]
    assert o.directions == ["maximize", "minimize"]
    assert o.values(RESULTS) == [0.4, 12.0]


def test_constraints_by_threshold_and_by_a_share_of_a_source():
    o = parse_objectives(
        {
            "objectives": [TARGET],
            "constraints": [
                {"name": "floor", "terms": [{"task": "keep", "metric": "acc"}], "min": 0.8},
                {"name": "short", "terms": [{"task": "fit", "metric": "gen_tokens"}], "max": 10},
                {
                    "name": "share",
                    "terms": [{"task": "keep", "metric": "acc"}],
                    "min_share": 0.9,
                    "source": "math",
                },
            ],
        },
        ["math", "lang"],
    )
    assert o.tasks == ["fit", "keep"]
    assert o.sources == ["math"] and o.source_tasks("math") == ["keep"]
    # <= 0 where satisfied: 0.85 >= 0.8; 12 > 10 tokens; 0.85 < 0.9 * 1.0 (the source's)
    v = o.violations(RESULTS, {"math": {"keep": {"acc": 1.0}}})
    assert v == pytest.approx([-0.05, 2.0, 0.05])
    assert o.violations(RESULTS, {"math": {"keep": {"acc": 0.9}}})[2] == pytest.approx(-0.04)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({}, "task: set exactly one of `fitness` .* got neither"),
        (
            {"fitness": [{"task": "a", "metric": "b"}], "objectives": [TARGET]},
            "task: set exactly one of .* got both",
        ),
        ({"objectives": []}, r"task.objectives: expected a non-empty list"),
        ({"objectives": ["x"]}, r"task.objectives\[0\]: expected a mapping"),
        ({"objectives": [{"terms": []}]}, r"task.objectives\[0\].name: must be a name"),
        (
            {"objectives": [{**TARGET, "direction": "up"}]},
            r"task.objectives\[0\].direction: must be maximize or minimize, got 'up'",
        ),
        ({"objectives": [{"name": "t", "terms": []}]}, r"task.objectives\[0\].terms: expected"),
        (
            {"objectives": [TARGET, {"name": "u", "terms": [{"task": "a"}]}]},
            r"task.objectives\[1\].terms\[0\]: expected a mapping with keys task, metric",
        ),
        (
            {"objectives": [{"name": "t", "terms": [{"task": "a", "metric": "b", "w": 1}]}]},
            r"task.objectives\[0\].terms\[0\]: unknown key\(s\) \['w'\]",
        ),
        (
            {"objectives": [{"name": "t", "terms": [{"task": "a", "metric": "b", "weight": "x"}]}]},
            r"task.objectives\[0\].terms\[0\].weight: must be a finite number, got 'x'",
        ),
        ({"objectives": [TARGET, TARGET]}, r"names must be unique, got \['target'\]"),
        (
            {"objectives": [{**TARGET, "sense": "max"}]},
            r"task.objectives\[0\]: unknown key\(s\) \['sense'\]",
        ),
        ({"objectives": [TARGET], "constraints": {"a": 1}}, "task.constraints: expected a list"),
        (
            {"objectives": [TARGET], "constraints": [{"name": "c", "terms": TARGET["terms"]}]},
            r"task.constraints\[0\]: set exactly one of min, max, min_share; got none",
        ),
        (
            {
                "objectives": [TARGET],
                "constraints": [{"name": "c", "terms": TARGET["terms"], "min": 1, "max": 2}],
            },
            r"task.constraints\[0\]: set exactly one of .* got \['min', 'max'\]",
        ),
        (
            {
                "objectives": [TARGET],
                "constraints": [{"name": "c", "terms": TARGET["terms"], "min": "high"}],
            },
            r"task.constraints\[0\].min: must be a finite number, got 'high'",
        ),
        (
            {
                "objectives": [TARGET],
                "constraints": [{"name": "c", "terms": TARGET["terms"], "min_share": 0.9}],
            },
            r"task.constraints\[0\]: `source` goes with min_share",
        ),
        (
            {
                "objectives": [TARGET],
                "constraints": [
                    {"name": "c", "terms": TARGET["terms"], "min_share": 0.9, "source": "nope"}
                ],
            },
            r"task.constraints\[0\].source: 'nope' is not a source of this run; sources: "
            r"\['math', 'lang'\]",
        ),
    ],
)
def test_bad_objectives_are_reported_with_their_key_path(task, message):
    with pytest.raises(ConfigError, match=message):
        parse_objectives(task, ["math", "lang"])


def test_long_bad_values_are_cut_to_a_preview():
    with pytest.raises(ConfigError) as e:
        parse_objectives({"objectives": [{**TARGET, "direction": "x" * 500}]})
    assert len(str(e.value)) < 160
