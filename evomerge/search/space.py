"""Build the genome space of a run: resolve model references, read the layer count."""

from __future__ import annotations

from pathlib import Path

from evomerge.errors import ConfigError
from evomerge.genome import GenomeSpace
from evomerge.genome.ps import PSSpace
from evomerge.model_ref import ADAPTER_SEPARATOR, model_config, num_layers_of, resolve_reference
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
        "tokenizer_source",
    }
    unknown = sorted(set(s) - known)
    if unknown:
        raise ConfigError(f"space: unknown key(s) {unknown}; valid: {sorted(known)}")
    for key in ("weight_range", "density_range"):
        if key in s:
            s[key] = tuple(float(v) for v in s[key])
    template = base or sources[0]
    return PSSpace(
        base_model=base,
        models=sources,
        model_names=tuple(name for name, _ in m.sources),
        num_layers=num_layers_of(template),
        dtype=m.dtype,
        random_seed=cfg.seed,
        # sources with other vocabularies (e.g. added tokens) are aligned to the live model's
        tokenizer_source=template if vocabularies_differ(template, sources) else None,
        **s,
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
    path = Path(model.partition(ADAPTER_SEPARATOR)[0]) / "tokenizer.json"
    return path.read_bytes() if path.is_file() else None
