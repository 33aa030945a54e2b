"""Typed search configuration, converted once from the composed Hydra config."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.evaluate import EvalSettings, Objective
from evomerge.evaluate.objectives import Goal, Objectives, parse_objectives

SAMPLERS = ("cmaes", "pycma", "random", "tpe", "nsga2")
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes", "pycma")  # CMA-ES ranks candidates by one value
CROSSOVERS = ("sbx", "uniform")  # NSGA-II's recombination of two parents (see nsga2.yaml)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    objective: Objective
    test: tuple[str, ...]
    include: tuple[str, ...]
    # task.objectives / constraints; None: the one objective above, maximized (task.fitness)
    objectives: Objectives | None = None

    @property
    def goals(self) -> Objectives:
        return self.objectives or Objectives((Goal("fitness", self.objective),))


@dataclass(frozen=True)
class ModelsSpec:
    name: str
    base_model: str | None
    sources: tuple[tuple[str, str], ...]  # (name, model reference)
    dtype: str | None
    toy_size: str


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    sampler: str
    n_trials: int
    population_size: int | None = None
    sigma0: float = 0.15
    restart_strategy: str | None = None
    n_startup_trials: int = 20
    crossover: str = "sbx"
    warm_start: tuple[dict[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"optimizer.sampler: must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.n_trials < 1:
            raise ConfigError(f"optimizer.n_trials: must be >= 1, got {self.n_trials}")
        if self.population_size is not None and self.population_size < 2:
            raise ConfigError(
                f"optimizer.population_size: must be >= 2, got {self.population_size}"
            )
        if not self.sigma0 > 0:
            raise ConfigError(f"optimizer.sigma0: must be > 0, got {self.sigma0}")
        if self.crossover not in CROSSOVERS:
            raise ConfigError(
                f"optimizer.crossover: must be one of {CROSSOVERS}, got {self.crossover!r}"
            )
        if self.restart_strategy not in (None, "ipop", "bipop"):
            raise ConfigError(
                f"optimizer.restart_strategy: must be null, ipop or bipop, "
                f"got {self.restart_strategy!r}"
            )


@dataclass(frozen=True)
class SearchConfig:
    run: str
    results_dir: Path
    storage: str | None
    seed: int
    threads: int | None
    heartbeat_s: int
    max_retry: int
    score_test: bool
    task: TaskSpec
    models: ModelsSpec
    space: dict[str, Any]
    optimizer: OptimizerSpec
    evaluator: EvalSettings
    sqlite_wal: bool = True
    merge_device: str | None = None  # None: see `merge_on`

    @property
    def merge_on(self) -> str:
        """Where source tensors are kept and candidates merged: `merge_device`, else the
        evaluator's device with evaluator=hf and the CPU with evaluator=vllm (the engine holds
        `gpu_memory_utilization` of the GPU; the copy of the model that the merge writes and
        the push reads lives on this device too)."""
        if self.merge_device is not None:
            return self.merge_device
        return "cpu" if self.evaluator.backend == "vllm" else self.evaluator.device

    @property
    def run_dir(self) -> Path:
        return self.results_dir / self.run

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.run_dir / 'study.db'}"


def search_config(cfg: dict[str, Any]) -> SearchConfig:
    """Typed config from the composed dict; every error names its key."""
    run = str(cfg["run"])
    if not run or "/" in run or run.startswith("."):
        raise ConfigError(f"run: must be a plain directory name, got {run!r}")
    task, models, opt = cfg["task"], cfg["models"], dict(cfg["optimizer"])
    sources = models.get("sources") or {}
    if not isinstance(sources, dict) or not sources:
        raise ConfigError("models.sources: need a mapping name -> model with at least one entry")
    if cfg["heartbeat_s"] < 1:
        raise ConfigError(f"heartbeat_s: must be >= 1, got {cfg['heartbeat_s']}")
    warm = tuple(dict(w) for w in opt.pop("warm_start", None) or ())
    merge_device = cfg.get("merge_device")
    if merge_device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", str(merge_device)):
        raise ConfigError(f"merge_device: must be null, cpu, cuda or cuda:N, got {merge_device!r}")
    known = set(OptimizerSpec.__dataclass_fields__)
    unknown = sorted(set(opt) - known)
    if unknown:
        raise ConfigError(f"optimizer: unknown key(s) {unknown}; valid: {sorted(known)}")
    objectives = parse_objectives(task, [str(k) for k in sources])
    optimizer = OptimizerSpec(**opt, warm_start=warm)
    if len(objectives.goals) > 1 and optimizer.sampler in SINGLE_OBJECTIVE_SAMPLERS:
        raise ConfigError(
            f"optimizer.sampler: {optimizer.sampler} optimizes one objective, task.objectives "
            f"has {len(objectives.goals)}; use optimizer=nsga2, optimizer=motpe or "
            "optimizer=random"
        )
    return SearchConfig(
        run=run,
        results_dir=Path(cfg["results_dir"]),
        storage=cfg.get("storage"),
        seed=int(cfg["seed"]),
        threads=cfg.get("threads"),
        heartbeat_s=int(cfg["heartbeat_s"]),
        max_retry=int(cfg["max_retry"]),
        score_test=bool(cfg["score_test"]),
        task=TaskSpec(
            name=str(task["name"]),
            objective=objectives.primary,
            test=tuple(task.get("test") or ()),
            include=tuple(str(p) for p in task.get("include") or ()),
            objectives=objectives,
        ),
        models=ModelsSpec(
            name=str(models["name"]),
            base_model=models.get("base_model"),
            sources=tuple((str(k), str(v)) for k, v in sources.items()),
            dtype=models.get("dtype"),
            toy_size=str(models.get("toy_size", "full")),
        ),
        space=dict(cfg["space"]),
        optimizer=optimizer,
        evaluator=EvalSettings.from_dict(dict(cfg["evaluator"])),
        sqlite_wal=bool(cfg.get("sqlite_wal", True)),
        merge_device=None if merge_device is None else str(merge_device),
    )
