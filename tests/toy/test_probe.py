import pytest

from evomerge.toy.probe import score_response


@pytest.mark.parametrize(
    ("response", "acc", "correct", "ja"),
    [
        ("一九.", 1, 1, 1),
        ("一九", 1, 1, 1),
        ("19.", 0, 1, 0),  # right number in English: no point on a Japanese task
        ("一八.", 0, 0, 1),
        ("〇一九.", 0, 0, 1),  # not canonical
        ("1九.", 0, 0, 0),
        ("", 0, 0, 0),
    ],
)
def test_score_response_applies_the_mgsm_ja_rule(
    response: str, acc: float, correct: float, ja: float
) -> None:
    assert score_response(response, 19, "ja") == {"acc": acc, "correct": correct, "ja": ja}


def test_english_task_wants_ascii_digits() -> None:
    assert score_response("19", 19, "en")["acc"] == 1.0
    assert score_response("一九", 19, "en") == {"acc": 0.0, "correct": 1.0, "ja": 1.0}
