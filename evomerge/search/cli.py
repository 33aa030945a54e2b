"""`python -m evomerge search [task=...] [models=...] [space=...] [optimizer=...] [evaluator=...]`.

Hydra overrides, e.g. `optimizer.n_trials=50 run=my-run storage=postgresql://u@host/db`.
Running the same command again resumes the run from results/<run>/study.db.
`--cfg job` prints the composed config and exits.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

from evomerge.config import compose, dump_config
from evomerge.errors import ConfigError, UsageError, preview
from evomerge.evaluate.tasks import check_task_names
from evomerge.files import write_text_atomic
from evomerge.search.config import SearchConfig, search_config
from evomerge.search.loop import run_search
from evomerge.search.space import build_space
from evomerge.search.study import check_resumable

PRINT_CONFIG = ("--cfg", "-c")  # Hydra's flags for printing the composed config
PRINTABLE = ("job", "all")  # what they may name here (no Hydra runtime config is composed)


def main(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    overrides, show = split_print_flag(argv)
    raw = compose("search", overrides)
    if show:
        print(dump_config(raw))
        return 0
    cfg = search_config(raw)
    check_environment(cfg)
    set_up_process(cfg)
    # Everything that can reject the command runs before the run directory is touched
    # (building a ps_dfs space writes its PS model there: the resumed run's meaning first).
    check_resumable(cfg, None)
    space = build_space(cfg)
    check_resumable(cfg, space)
    check_task_names([*cfg.task.goals.tasks, *cfg.task.test], cfg.task.include)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg.run_dir / "config.yaml", dump_config(raw))
    summary = run_search(cfg, space=space)
    print(json.dumps(summary, indent=2))
    print(f"best recipe: {cfg.run_dir / 'best_recipe.yaml'}")
    return 0


def split_print_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """(overrides, whether to print the config): Hydra's `--cfg job` (or `--cfg=job`, `-c
    job`); a bare `--cfg` means job too."""
    overrides, show, args = [], False, list(argv)
    while args:
        arg = args.pop(0)
        flag, eq, value = arg.partition("=")
        if flag.startswith("-") and flag not in PRINT_CONFIG:
            raise UsageError(
                f"unknown option {preview(flag)}: search takes Hydra overrides key=value and "
                "--cfg job (see `python -m evomerge search --help`)"
            )
        if flag not in PRINT_CONFIG:
            overrides.append(arg)
            continue
        show = True
        if not eq and args and args[0] in (*PRINTABLE, "hydra"):
            value = args.pop(0)
        if value == "hydra":
            raise ConfigError("--cfg hydra: not available here; use --cfg job")
    return overrides, show


def check_environment(cfg: SearchConfig) -> None:
    """What the typed config cannot know: a CUDA device where one is named, a writable
    results_dir."""
    import torch

    for key, device in (("evaluator.device", cfg.evaluator.device), ("merge_device", cfg.merge_on)):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"{key}: {device} requested but no CUDA device is available; use cpu")
    existing = next(p for p in (cfg.run_dir, *cfg.run_dir.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "not a directory" if not existing.is_dir() else "not writable"
        raise ConfigError(
            f"results_dir: cannot write the run to {cfg.run_dir}: {existing} is {what}"
        )


def set_up_process(cfg: SearchConfig) -> None:
    """Threads, progress bars and log levels of a search process."""
    import optuna
    import torch

    torch.set_num_threads(cfg.threads or cfg.models.threads or os.cpu_count() or 1)
    # lm-eval and transformers draw a bar per request batch; ours (explicit disable=) stays.
    os.environ.setdefault("TQDM_DISABLE", "1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
