"""A run's genome space: built from the typed `space` section (model references resolved,
layer counts read), and what its winner is written as besides best_recipe.yaml.

`space=ps`: per layer group and source model, the method's parameters (genome/ps.py).
`space=dfs`: a path through the source models' layers; `space=ps_dfs`: the PS search's result
becomes the first DFS source, as in the paper (genome/dfs.py). PS+DFS export: the PS recipe is
materialized once into `<run_dir>/ps_model` (a plain checkpoint whose model card holds the
recipe), and the DFS recipe reads that directory like any other model. So `python -m evomerge
merge <run_dir>/best_recipe.yaml OUT` works as long as `ps_model` exists;
`best_recipe_standalone.yaml` holds both stages (the PS merge, named `ps_model`, then the path
over it) and needs only the sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from evomerge.errors import ConfigError
from evomerge.genome import GenomeSpace
from evomerge.genome.dfs import DFSSpace
from evomerge.genome.ps import PSSpace
from evomerge.merge import MergeOptions, merge_to_disk
from evomerge.merge.confine import ModelRoot
from evomerge.merge.multistage import Stage, dump_stages, with_results
from evomerge.model_ref import (
    ADAPTER_SEPARATOR,
    model_config,
    num_layers_of,
    resolve_reference,
)
from evomerge.recipe import Recipe, dump_recipe, load_recipe
from evomerge.search.config import DFSSpec, SearchConfig
from evomerge.search.trial_record import describe


@dataclass(frozen=True)
class RunSpace:
    """A run's genome space (the GenomeSpace calls go to `genome`), and for PS+DFS the PS
    merge its paths read: `ps_recipe`, materialized at `ps_dir`."""

    genome: GenomeSpace
    ps_recipe: Recipe | None = None
    ps_dir: Path | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self.genome.names

    @property
    def template_model(self) -> str:
        return self.genome.template_model

    def x0(self) -> np.ndarray:
        return self.genome.x0()

    def decode(self, x: np.ndarray) -> Recipe:
        return self.genome.decode(x)

    def encode(self, recipe: Recipe) -> np.ndarray:
        return self.genome.encode(recipe)

    def fingerprint(self) -> str:
        return self.genome.fingerprint()

    def winner_files(
        self, run_dir: Path, recipe: Recipe, trial: optuna.trial.FrozenTrial
    ) -> dict[str, str]:
        """Files besides best_recipe.yaml: for PS+DFS, the PS merge and the path in one
        two-stage file that needs only the sources (`best_recipe_standalone.yaml`)."""
        if self.ps_recipe is None or self.ps_dir is None:
            return {}
        path = run_dir / "best_recipe_standalone.yaml"
        header = (
            f"# best candidate of this run: trial {trial.number}, {describe(trial)}; stage\n"
            f"# ps_model re-merges the PS result, then the path runs over it:\n"
            f"# python -m evomerge merge {path} OUT_DIR\n"
        )
        stages = (
            Stage("ps_model", self.ps_recipe),
            Stage(None, with_results(recipe, {str(self.ps_dir): "ps_model"})),
        )
        return {path.name: header + dump_stages(stages)}


def build_space(cfg: SearchConfig) -> RunSpace:
    """The run's genome space, from the typed `space` section."""
    if isinstance(cfg.space, DFSSpec):
        return build_dfs_space(cfg, cfg.space)
    m, s = cfg.models, cfg.space
    base = resolve_reference(m.base_model, m.toy_size) if m.base_model else None
    sources = tuple(resolve_reference(ref, m.toy_size) for _, ref in m.sources)
    template = base or sources[0]
    return RunSpace(
        PSSpace(
            base_model=base,
            models=sources,
            model_names=tuple(name for name, _ in m.sources),
            num_layers=num_layers_of(template),
            method=s.method,
            layers_per_group=s.layers_per_group,
            weight_range=s.weight_range,
            density_range=s.density_range,
            x0_weight=s.x0_weight,
            x0_density=s.x0_density,
            parameters=dict(s.parameters),
            dtype=m.dtype,
            random_seed=cfg.seed,
            # sources with other vocabularies (e.g. added tokens): aligned to the live model's
            tokenizer_source=template if vocabularies_differ(template, sources) else None,
        )
    )


def vocabularies_differ(template: str, sources: tuple[str, ...]) -> bool:
    """Whether some source's vocabulary may differ from the template's: another vocab_size,
    or (local directories) another tokenizer.json."""
    size = model_config(template).get("vocab_size")
    tokenizer = _tokenizer_bytes(template)
    return any(
        model_config(s).get("vocab_size") != size or _tokenizer_bytes(s) != tokenizer
        for s in sources
    )


def _tokenizer_bytes(model: str) -> bytes | None:
    directory = model.partition(ADAPTER_SEPARATOR)[0]
    root = ModelRoot.of(directory)  # read inside the model's root, as every model file
    if not root.exists("tokenizer.json"):
        return None
    with root.open("tokenizer.json") as f:
        return f.read()


PS_MODEL = "ps"  # the PS result's name among the DFS sources


def build_dfs_space(cfg: SearchConfig, s: DFSSpec) -> RunSpace:
    """The DFS space over `space.sources` (names from models.sources; null: all), with the
    materialized PS model first for ps_dfs."""
    pairs = _sources(cfg, s.sources)
    ps_recipe = None
    if s.kind == "ps_dfs":
        ps_recipe = load_recipe(ps_recipe_file(cfg, s.ps_recipe))
        pairs.insert(0, (PS_MODEL, materialize_ps(cfg, ps_recipe)))
    genome = DFSSpace(
        models=tuple(ref for _, ref in pairs),
        model_names=tuple(name for name, _ in pairs),
        num_layers=tuple(num_layers_of(ref) for _, ref in pairs),
        repeats=s.repeats,
        scaling=s.scaling,
        scale_range=s.scale_range,
        max_path_length=s.max_path_length,
        hidden_sizes=tuple(int(model_config(ref).get("hidden_size", 0)) for _, ref in pairs),
        dtype=cfg.models.dtype,
    )
    ps_dir = Path(pairs[0][1]) if ps_recipe is not None else None
    return RunSpace(genome, ps_recipe=ps_recipe, ps_dir=ps_dir)


def _sources(cfg: SearchConfig, names: tuple[str, ...] | None) -> list[tuple[str, str]]:
    m = cfg.models
    by_name = dict(m.sources)
    chosen = list(by_name) if names is None else list(names)
    missing = [n for n in chosen if n not in by_name]
    if missing or not chosen:
        raise ConfigError(
            f"space.sources: {missing or 'an empty list'} not among models.sources {list(by_name)}"
        )
    if PS_MODEL in chosen:
        raise ConfigError(f"space.sources: {PS_MODEL!r} names the PS result; rename that model")
    return [(n, resolve_reference(by_name[n], m.toy_size)) for n in chosen]


def ps_recipe_file(cfg: SearchConfig, value: Any) -> Path:
    """`space.ps_recipe`: a recipe YAML, or the run name of a finished PS search."""
    if not value:
        raise ConfigError(
            "space.ps_recipe: give the PS result, a best_recipe.yaml or the run name of a "
            "finished PS search, e.g. space.ps_recipe=toy_mgsm_ja-ps-cmaes"
        )
    path = Path(str(value))
    if path.suffix not in (".yaml", ".yml"):
        path = cfg.results_dir / str(value) / "best_recipe.yaml"
    if not path.is_file():
        raise ConfigError(f"space.ps_recipe: {path} does not exist; run the PS search first")
    return path


def materialize_ps(cfg: SearchConfig, recipe: Recipe) -> str:
    """Merge the PS recipe into `<run_dir>/ps_model` once; a resumed run reuses it when its model
    card holds the same recipe, and refuses a different one."""
    out = (cfg.run_dir / "ps_model").resolve()
    if out.exists():
        card = out / "README.md"
        if not card.is_file() or dump_recipe(recipe) not in card.read_text(encoding="utf-8"):
            raise ConfigError(
                f"space.ps_recipe: {out} was merged from a different PS recipe; "
                f"choose a new run=NAME or delete {out}"
            )
        return str(out)
    merge_to_disk(recipe, out, MergeOptions(progress=False))
    return str(out)
