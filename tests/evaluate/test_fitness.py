import pytest

from evomerge.errors import ConfigError, EvaluationError
from evomerge.evaluate import Objective, Term, fitness
from evomerge.evaluate.objectives import parse_terms

RESULTS = {"fit": {"acc": 0.5, "ja": 0.9}, "probe": {"acc": 0.25}}


def test_weighted_sum_of_named_metrics():
    obj = Objective((Term("fit", "acc", 1.0), Term("fit", "ja", 0.5), Term("probe", "acc", -2)))
    assert fitness(RESULTS, obj) == pytest.approx(0.5 + 0.45 - 0.5)


def test_parse_defaults_weight_to_one_and_lists_tasks_once():
    obj = parse_terms(
        [{"task": "fit", "metric": "acc"}, {"task": "fit", "metric": "ja"}], "task.fitness"
    )
    assert obj.terms[0].weight == 1.0
    assert obj.tasks == ["fit"]


def test_missing_metric_is_an_error_naming_what_is_available():
    with pytest.raises(
        EvaluationError, match=r"metric 'exact' missing for task 'fit'.*'acc', 'ja'"
    ):
        fitness(RESULTS, Objective((Term("fit", "exact"),)))
    with pytest.raises(EvaluationError, match="task 'nope' missing"):
        fitness(RESULTS, Objective((Term("nope", "acc"),)))


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], r"task.fitness: expected a non-empty list"),
        ([{"task": "fit"}], r"task.fitness\[0\]: expected a mapping with keys task, metric"),
        (
            [{"task": "a", "metric": "m", "weight": "x"}],
            r"task.fitness\[0\].weight: must be a finite number",
        ),
        (
            [{"task": "a", "metric": "m", "weight": float("nan")}],
            r"weight: must be a finite number",
        ),
    ],
)
def test_bad_objectives_are_config_errors(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_terms(items, "task.fitness")


def test_metric_names_drop_a_single_filter_and_keep_several():
    from evomerge.evaluate.runner import _metrics

    one = {"alias": "t", "acc,ja-answer": 0.5, "acc_stderr,ja-answer": "N/A", "ja,ja-answer": 1}
    assert _metrics(one) == {"acc": 0.5, "ja": 1.0}
    two = {"exact_match,strict": 0.25, "exact_match,flexible": 0.5, "sample_len": 9}
    assert _metrics(two) == {"exact_match,strict": 0.25, "exact_match,flexible": 0.5}
