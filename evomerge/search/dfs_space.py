"""The data-flow spaces of a run: `space=dfs` (a path through the source models) and
`space=ps_dfs` (the PS search's result becomes the first DFS source, as in the paper).

PS+DFS export: the PS recipe is materialized once into `<run_dir>/ps_model` (a plain checkpoint
whose model card holds the recipe), and the DFS recipe reads that directory like any other model.
So `python -m evomerge merge <run_dir>/best_recipe.yaml OUT` works as long as `ps_model` exists;
`best_recipe_standalone.yaml` holds both stages (the PS merge, named `ps_model`, then the path
over it) and needs only the sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.genome.dfs import DFSSpace
from evomerge.merge import MergeOptions, merge_to_disk
from evomerge.model_ref import model_config, num_layers_of, resolve_reference
from evomerge.recipe import Recipe, dump_recipe, load_recipe
from evomerge.search.config import DFSSpec, SearchConfig
from evomerge.search.run_space import RunSpace

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
