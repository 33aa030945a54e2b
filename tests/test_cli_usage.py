"""Usage errors of `merge`, `eval` and `toy` are one line with exit code 2, like any other
error; --help still prints the whole usage."""

from __future__ import annotations

import pytest

from evomerge.__main__ import main

USAGE_ERRORS = {
    "merge_no_arguments": (["merge"], "required: recipe, out_dir"),
    "merge_unknown_flag": (["merge", "r.yaml", "out", "--bogus"], "unrecognized arguments"),
    "merge_threads_huge": (["merge", "r.yaml", "out", "--threads", "100000"], "--threads: must be in [1, "),
    "merge_threads_zero": (["merge", "r.yaml", "out", "--threads", "0"], "--threads: must be in [1, "),
    "merge_bad_dtype": (["merge", "r.yaml", "out", "--out-dtype", "int4"], "invalid choice"),
    "eval_unknown_flag": (["eval", "model=x", "--bogus"], "unrecognized arguments"),
    "eval_no_model": (["eval", "task=toy_mgsm_ja"], "model= is required"),
    "eval_not_key_value": (["eval", "model=x", "oops"], "expected KEY=VALUE, got 'oops'"),
    "toy_unknown_flag": (["toy", "--bogus"], "unrecognized arguments"),
    "toy_threads_huge": (["toy", "--threads", "100000"], "--threads: must be in [1, 256]"),
    "toy_bad_size": (["toy", "--size", "huge"], "invalid choice"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_errors_are_one_line(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv, message = USAGE_ERRORS[case]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    command = argv[0]
    assert captured.err.startswith(f"evomerge {command}: error: ") and message in captured.err
    assert f"python -m evomerge {command} --help" in captured.err and not captured.out


@pytest.mark.parametrize("command", ["merge", "eval", "toy"])
def test_help_prints_the_usage(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m evomerge {command}")
