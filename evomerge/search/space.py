"""Build the genome space of a run: resolve model references, read the layer count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.genome import GenomeSpace
from evomerge.genome.ps import PSSpace
from evomerge.search.config import SearchConfig


def resolve_reference(ref: str, toy_size: str) -> str:
    """`toy:<member>` -> the cached toy model directory (built on first use); others unchanged."""
    if ref.startswith("toy:"):
        from evomerge.toy import ensure_family

        return str(ensure_family(size=toy_size).path(ref.removeprefix("toy:")))
    return ref


def num_layers_of(model: str) -> int:
    """`num_hidden_layers` from a local directory's config.json or a Hub model's config."""
    config = model_config(model)
    n = config.get("num_hidden_layers") or config.get("text_config", {}).get("num_hidden_layers")
    if not isinstance(n, int):
        raise ConfigError(f"models: {model!r} has no num_hidden_layers in its config")
    return n


def model_config(model: str) -> dict[str, Any]:
    """A local directory's config.json, or a Hub model's config."""
    path = Path(model) / "config.json"
    if path.is_file():
        config: dict[str, Any] = json.loads(path.read_text())
    else:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model).to_dict()
        except OSError as e:
            raise ConfigError(f"models: cannot read the config of {model!r}: {e}") from e
    return config


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
