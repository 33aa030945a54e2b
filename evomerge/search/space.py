"""Build the genome space of a run: resolve model references, read the layer count."""

from __future__ import annotations

from evomerge.genome.ps import PSSpace
from evomerge.merge.confine import ModelRoot
from evomerge.model_ref import ADAPTER_SEPARATOR, model_config, num_layers_of, resolve_reference
from evomerge.search.config import DFSSpec, SearchConfig
from evomerge.search.run_space import RunSpace


def build_space(cfg: SearchConfig) -> RunSpace:
    """The run's genome space, from the typed `space` section."""
    if isinstance(cfg.space, DFSSpec):
        from evomerge.search.dfs_space import build_dfs_space

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
