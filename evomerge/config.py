"""Hydra composition at the entry points; library code only ever sees plain, typed objects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PREVIEW_CHARS = 60  # a bad value is shown this long at most: one line, whatever was typed


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


def check_keys(section: str, given: Mapping[str, Any], valid: Iterable[str]) -> None:
    """One error naming every unknown key of a config section, and the valid ones."""
    valid = sorted(valid)
    unknown = sorted(str(k) for k in given if k not in valid)
    if unknown:
        where = f"{section}: " if section else ""
        raise ConfigError(f"{where}unknown key(s) {unknown}; valid: {valid}")


def typed(value: Any, kind: type, path: str, *, low: float | None = None) -> Any:
    """`value` as `kind` (bool, int, float or str), strictly: `no` is no boolean, 1.5 no
    integer, `abc` no number; with `low`, a number below it is an error too."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false, got {preview(value)}")
        return value
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{path}: must be an integer, got {preview(value)}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: must be a number, got {preview(value)}")
        value = float(value)
    if kind is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{path}: must be a string, got {preview(value)}")
        return str(value)
    if low is not None and value < low:
        raise ConfigError(f"{path}: must be >= {low:g}, got {preview(value)}")
    return value


def typed_pair(value: Any, path: str) -> tuple[float, float]:
    """`[low, high]` as two floats."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(f"{path}: must be [low, high], got {preview(value)}")
    return typed(value[0], float, f"{path}[0]"), typed(value[1], float, f"{path}[1]")


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """repr(value), cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
