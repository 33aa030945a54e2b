"""Hydra composition at the entry points; library code only ever sees plain, typed objects."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose(config_name: str, overrides: Sequence[str]) -> dict[str, Any]:
    """Compose `configs/<config_name>.yaml` with command-line overrides into a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(str(e).strip()) from e
    if not isinstance(container, dict):
        raise ConfigError(f"configs/{config_name}.yaml: expected a mapping")
    return {str(k): v for k, v in container.items()}


def quote_list_override(overrides: Sequence[str], key: str) -> list[str]:
    """Let `key=a,b` mean the list [a, b] (Hydra would read it as a sweep)."""
    out = []
    for o in overrides:
        name, sep, value = o.partition("=")
        if name == key and sep and "," in value and value[:1] not in "[\"'":
            o = f"{key}=[{value}]"
        out.append(o)
    return out


def dump_config(cfg: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
