"""Typed search configuration, converted once from the composed Hydra config."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.config import check_keys, typed, typed_pair
from evomerge.errors import ConfigError, preview
from evomerge.evaluate import EvalSettings, Objective
from evomerge.evaluate.estimator import EstimatorSpec
from evomerge.evaluate.objectives import Goal, Objectives, parse_objectives

SAMPLERS = ("cmaes", "pycma", "random", "tpe", "nsga2")
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes", "pycma")  # CMA-ES ranks candidates by one value
CROSSOVERS = ("sbx", "uniform")  # NSGA-II's recombination of two parents (see nsga2.yaml)
SPACE_KINDS = ("ps", "dfs", "ps_dfs")
X0_CHOICES = ("uniform", "grid")  # space.x0: where CMA-ES starts (search/warmstart.py)
# What a trial's fitness means. A resumed run keeps every leaf of these (else trials scored
# differently would be ranked side by side in one study); the rest (optimizer.n_trials,
# workers, threads, heartbeat, progress, the held-out test tasks) may change between runs.
FITNESS_SECTIONS = ("task", "models", "space", "estimator", "seed")
FITNESS_EVALUATOR = ("limit", "num_fewshot", "apply_chat_template", "gen_kwargs", "max_length")
FITNESS_FREE = ("task.test", "models.threads")  # no effect on a candidate's fitness


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
    threads: int | None = None  # the family's CPU threads when `threads` is null; None: all


@dataclass(frozen=True)
class PSSpec:
    """`space=ps`: per layer group and source model, the method's genome parameters."""

    name: str
    method: str
    layers_per_group: int
    weight_range: tuple[float, float]
    density_range: tuple[float, float]
    x0_weight: float
    x0_density: float
    parameters: Mapping[str, Any] = field(default_factory=dict)  # the method's fixed ones
    kind: str = "ps"
    x0: str = "uniform"  # grid: score a coarse uniform grid first, start at its best


@dataclass(frozen=True)
class DFSSpec:
    """`space=dfs` (a path through the sources' layers) and `space=ps_dfs` (the PS result
    first among them, from `ps_recipe`)."""

    name: str
    kind: str
    sources: tuple[str, ...] | None  # names from models.sources; None: all of them
    repeats: int
    scaling: str
    scale_range: tuple[float, float]
    max_path_length: int | None
    ps_recipe: str | None = None


# Candidates per generation where optimizer.population_size is null: the window of the budget
# ledger, the first generation the estimator calibrates on, and the draws of estimator.redraw
# (a CMA-ES generation of the toy's default space is 10: configs/optimizer/cmaes.yaml).
GENERATION_DEFAULT = 10
NSGA2_POPULATION_DEFAULT = 50  # NSGA-II's own population when it is null: Optuna's default


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

    @property
    def generation_size(self) -> int:
        """Candidates per generation (GENERATION_DEFAULT where population_size is null)."""
        return self.population_size or GENERATION_DEFAULT

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
    space: PSSpec | DFSSpec
    optimizer: OptimizerSpec
    evaluator: EvalSettings
    sqlite_wal: bool = True
    merge_device: str | None = None  # None: see `merge_on`
    estimator: EstimatorSpec = field(default_factory=EstimatorSpec)  # configs/estimator/
    # (key path, JSON value) of every setting that defines fitness (`fitness_settings`)
    fitness_meaning: tuple[tuple[str, str], ...] = ()

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


TOP_KEYS = tuple(f for f in SearchConfig.__dataclass_fields__ if f != "fitness_meaning")
SECTIONS = ("task", "models", "space", "optimizer", "evaluator", "estimator")  # mappings


def search_config(cfg: dict[str, Any]) -> SearchConfig:
    """Typed config from the composed dict, strictly typed; every error names its key."""
    try:
        return _search_config(cfg)
    except KeyError as e:  # a key the configs/ files give, removed with ~key
        raise ConfigError(f"{e.args[0]}: missing; the search needs it (see configs/)") from None


def _search_config(cfg: dict[str, Any]) -> SearchConfig:
    check_keys("", cfg, TOP_KEYS)
    for section in SECTIONS:
        value = cfg[section] if section != "estimator" else cfg.get(section) or {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{section}: must be a mapping of settings, got {preview(value)}")
    run = typed(cfg["run"], str, "run")
    if not run or "/" in run or run.startswith("."):
        raise ConfigError(f"run: must be a plain directory name, got {run!r}")
    threads = cfg.get("threads")
    merge_device = cfg.get("merge_device")
    if merge_device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", str(merge_device)):
        raise ConfigError(f"merge_device: must be null, cpu, cuda or cuda:N, got {merge_device!r}")
    storage = cfg.get("storage")
    models = models_spec(cfg["models"])
    task = task_spec(cfg["task"], [name for name, _ in models.sources])
    optimizer = optimizer_spec(cfg["optimizer"])
    if len(task.goals.goals) > 1 and optimizer.sampler in SINGLE_OBJECTIVE_SAMPLERS:
        raise ConfigError(
            f"optimizer.sampler: {optimizer.sampler} optimizes one objective, task.objectives "
            f"has {len(task.goals.goals)}; use optimizer=nsga2, optimizer=motpe or "
            "optimizer=random"
        )
    estimator = estimator_spec(cfg.get("estimator") or {})
    check_estimator(estimator, task)
    return SearchConfig(
        run=run,
        results_dir=Path(typed(cfg["results_dir"], str, "results_dir")),
        storage=None if storage is None else typed(storage, str, "storage"),
        seed=typed(cfg["seed"], int, "seed"),
        threads=None if threads is None else typed(threads, int, "threads", low=1),
        heartbeat_s=typed(cfg["heartbeat_s"], int, "heartbeat_s", low=1),
        max_retry=typed(cfg["max_retry"], int, "max_retry", low=0),
        score_test=typed(cfg["score_test"], bool, "score_test"),
        task=task,
        models=models,
        space=space_spec(cfg["space"]),
        optimizer=optimizer,
        evaluator=EvalSettings.from_dict(dict(cfg["evaluator"])),
        sqlite_wal=typed(cfg.get("sqlite_wal", True), bool, "sqlite_wal"),
        merge_device=None if merge_device is None else str(merge_device),
        estimator=estimator,
        fitness_meaning=fitness_settings(cfg),
    )


def fitness_settings(cfg: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The composed config's settings that define fitness, as (key path, JSON value) leaves:
    every leaf of FITNESS_SECTIONS and the evaluator's FITNESS_EVALUATOR, but FITNESS_FREE."""
    out: dict[str, str] = {}

    def walk(path: str, value: Any) -> None:
        if path in FITNESS_FREE:
            return
        if isinstance(value, Mapping) and value:
            for key, inner in value.items():
                walk(f"{path}.{key}", inner)
        else:
            out[path] = json.dumps(value, sort_keys=True, default=str)

    for key in FITNESS_SECTIONS:
        walk(key, cfg.get(key))
    evaluator = cfg.get("evaluator") or {}
    for key in FITNESS_EVALUATOR:
        walk(f"evaluator.{key}", evaluator.get(key) if isinstance(evaluator, Mapping) else None)
    return tuple(sorted(out.items()))


def estimator_spec(raw: Mapping[str, Any]) -> EstimatorSpec:
    check_keys("estimator", raw, EstimatorSpec.__dataclass_fields__)
    d = EstimatorSpec()
    fit_trials = raw.get("fit_trials")

    def get(key: str, kind: type) -> Any:
        return typed(raw.get(key, getattr(d, key)), kind, f"estimator.{key}")

    return EstimatorSpec(
        name=get("name", str),
        kind=get("kind", str),
        n=get("n", int),
        select=get("select", str),
        model=get("model", str),
        fit_trials=None if fit_trials is None else typed(fit_trials, int, "estimator.fit_trials"),
        seed=get("seed", int),
        race=get("race", bool),
        chunk=get("chunk", int),
        race_z=get("race_z", float),
        rescore_top=get("rescore_top", int),
        redraw=get("redraw", str),
    )


def check_estimator(estimator: EstimatorSpec, task: TaskSpec) -> None:
    """Estimates serve one fitness: several objectives or constraints read other metrics of
    the same documents, which a subset or a stopped race would bias."""
    goals = task.goals
    if estimator.estimates and (len(goals.goals) > 1 or goals.constraints):
        key = "estimator.kind" if estimator.kind != "full" else "estimator.race"
        value = estimator.kind if estimator.kind != "full" else "true"
        raise ConfigError(
            f"{key}: {value} estimates one fitness, task.objectives/constraints has "
            f"{len(goals.goals)} objective(s) and {len(goals.constraints)} constraint(s); "
            "use estimator=full with several objectives"
        )
    terms = task.objective.terms
    if estimator.race and (len(terms) != 1 or terms[0].weight <= 0):
        raise ConfigError(
            "estimator.race: needs a fitness of one term with a positive weight "
            f"(task.fitness), got {len(terms)} term(s)"
        )


def task_spec(task: dict[str, Any], source_names: list[str]) -> TaskSpec:
    check_keys("task", task, ("name", "fitness", "objectives", "constraints", "test", "include"))
    objectives = parse_objectives(task, source_names)
    return TaskSpec(
        name=typed(task["name"], str, "task.name"),
        objective=objectives.primary,
        test=tuple(task.get("test") or ()),
        include=tuple(str(p) for p in task.get("include") or ()),
        objectives=objectives,
    )


def models_spec(models: dict[str, Any]) -> ModelsSpec:
    check_keys("models", models, ("name", "toy_size", "base_model", "sources", "dtype", "threads"))
    sources = models.get("sources") or {}
    threads = models.get("threads")
    if not isinstance(sources, dict) or not sources:
        raise ConfigError("models.sources: need a mapping name -> model with at least one entry")
    return ModelsSpec(
        name=typed(models["name"], str, "models.name"),
        base_model=models.get("base_model"),
        sources=tuple((str(k), str(v)) for k, v in sources.items()),
        dtype=models.get("dtype"),
        toy_size=typed(models.get("toy_size", "full"), str, "models.toy_size"),
        threads=None if threads is None else typed(threads, int, "models.threads", low=1),
    )


def optimizer_spec(opt: dict[str, Any]) -> OptimizerSpec:
    check_keys("optimizer", opt, OptimizerSpec.__dataclass_fields__)
    size, restart = opt.get("population_size"), opt.get("restart_strategy")
    n_startup = opt.get("n_startup_trials", OptimizerSpec.n_startup_trials)
    return OptimizerSpec(
        name=typed(opt["name"], str, "optimizer.name"),
        sampler=typed(opt["sampler"], str, "optimizer.sampler"),
        n_trials=typed(opt["n_trials"], int, "optimizer.n_trials"),
        population_size=None if size is None else typed(size, int, "optimizer.population_size"),
        sigma0=typed(opt.get("sigma0", OptimizerSpec.sigma0), float, "optimizer.sigma0"),
        restart_strategy=None if restart is None else str(restart),
        n_startup_trials=typed(n_startup, int, "optimizer.n_startup_trials"),
        crossover=typed(opt.get("crossover", OptimizerSpec.crossover), str, "optimizer.crossover"),
        warm_start=tuple(dict(w) for w in opt.get("warm_start") or ()),
    )


PS_KEYS = ("name", "kind", *(f for f in PSSpec.__dataclass_fields__ if f != "kind"))


def x0_choice(value: Any) -> str:
    x0 = typed(value, str, "space.x0")
    if x0 not in X0_CHOICES:
        raise ConfigError(f"space.x0: must be one of {X0_CHOICES}, got {x0!r}")
    return str(x0)


DFS_KEYS = ("name", "kind", "sources", "repeats", "scaling", "scale_range", "max_path_length")


def space_spec(space: dict[str, Any]) -> PSSpec | DFSSpec:
    kind = space.get("kind", "ps")
    if kind not in SPACE_KINDS:
        raise ConfigError(f"space.kind: {kind!r} is not available; use space=ps, dfs or ps_dfs")
    if kind == "ps":
        check_keys("space", space, PS_KEYS)
        return PSSpec(
            name=typed(space["name"], str, "space.name"),
            method=typed(space["method"], str, "space.method"),
            layers_per_group=typed(space["layers_per_group"], int, "space.layers_per_group"),
            weight_range=typed_pair(space["weight_range"], "space.weight_range"),
            density_range=typed_pair(space["density_range"], "space.density_range"),
            x0_weight=typed(space["x0_weight"], float, "space.x0_weight"),
            x0_density=typed(space["x0_density"], float, "space.x0_density"),
            parameters=dict(space.get("parameters") or {}),
            x0=x0_choice(space.get("x0", "uniform")),
        )
    check_keys(f"space ({kind})", space, (*DFS_KEYS, "ps_recipe") if kind == "ps_dfs" else DFS_KEYS)
    sources, limit, ps_recipe = (
        space.get("sources"),
        space.get("max_path_length"),
        space.get("ps_recipe"),
    )
    return DFSSpec(
        name=typed(space["name"], str, "space.name"),
        kind=kind,
        sources=None
        if sources is None
        else tuple(str(s) for s in ([sources] if isinstance(sources, str) else sources)),
        repeats=typed(space["repeats"], int, "space.repeats"),
        scaling=typed(space["scaling"], str, "space.scaling"),
        scale_range=typed_pair(space["scale_range"], "space.scale_range"),
        max_path_length=None if limit is None else typed(limit, int, "space.max_path_length"),
        ps_recipe=None if not ps_recipe else str(ps_recipe),
    )
