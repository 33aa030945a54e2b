"""Build the genome space of a run: resolve model references, read the layer count."""

from __future__ import annotations

from evomerge.errors import ConfigError
from evomerge.genome import GenomeSpace
from evomerge.genome.ps import PSSpace
from evomerge.model_ref import num_layers_of, resolve_reference
from evomerge.search.config import SearchConfig


def build_space(cfg: SearchConfig) -> GenomeSpace:
    m = cfg.models
    base = resolve_reference(m.base_model, m.toy_size) if m.base_model else None
    sources = tuple(resolve_reference(ref, m.toy_size) for _, ref in m.sources)
    s = dict(cfg.space)
    kind = s.pop("kind", "ps")
    s.pop("name", None)
    if kind in ("dfs", "ps_dfs"):
        from evomerge.search.dfs_space import build_dfs_space

        return build_dfs_space(cfg, kind, s)
    if kind != "ps":
        raise ConfigError(f"space.kind: {kind!r} is not available; use space=ps, dfs or ps_dfs")
    known = set(PSSpace.__dataclass_fields__) - {
        "base_model",
        "models",
        "model_names",
        "num_layers",
        "dtype",
        "random_seed",
    }
    unknown = sorted(set(s) - known)
    if unknown:
        raise ConfigError(f"space: unknown key(s) {unknown}; valid: {sorted(known)}")
    for key in ("weight_range", "density_range"):
        if key in s:
            s[key] = tuple(float(v) for v in s[key])
    return PSSpace(
        base_model=base,
        models=sources,
        model_names=tuple(name for name, _ in m.sources),
        num_layers=num_layers_of(base or sources[0]),
        dtype=m.dtype,
        random_seed=cfg.seed,
        **s,
    )
