"""Model cards (README.md) of merged checkpoints, in the form the Hugging Face Hub reads.

A card opens with a YAML metadata block: `base_model` (the source models that are Hub ids, a
string for one and a list for several; a LoRA source lists its base and its adapter; local
directories are named in the text only, since the Hub accepts model ids there),
`library_name: transformers` and `tags` (`merge`, `evomerge`, the merge method). The body says
how the model was made and holds the recipe that reproduces it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from evomerge import __version__
from evomerge.merge.lora import SEPARATOR

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_ids(refs: Iterable[str]) -> list[str]:
    """The references (and LoRA parts) that name Hub models, not local directories; in order."""
    out = []
    for ref in refs:
        for part in ref.split(SEPARATOR):
            if _HUB_ID.fullmatch(part) and not Path(part).expanduser().exists():
                out.append(part)
    return list(dict.fromkeys(out))


def card_metadata(models: Sequence[str], methods: Sequence[str]) -> dict[str, Any]:
    """The Hub metadata block: base_model (Hub ids only), library_name, tags."""
    meta: dict[str, Any] = {}
    ids = hub_ids(models)
    if ids:
        meta["base_model"] = ids[0] if len(ids) == 1 else ids
    meta["library_name"] = "transformers"
    meta["tags"] = list(dict.fromkeys(["merge", "evomerge", *methods]))
    return meta


def render_card(
    *,
    models: Sequence[str],
    methods: Sequence[str],
    intro: str,
    recipe_yaml: str,
    sections: Mapping[str, str] | None = None,
) -> str:
    """A whole README.md: metadata block, intro, extra sections, sources, recipe, version."""
    meta = yaml.safe_dump(card_metadata(models, methods), sort_keys=False, allow_unicode=True)
    listed = "\n".join(f"- `{ref}`" for ref in models)
    body = "".join(f"## {title}\n\n{text.strip()}\n\n" for title, text in (sections or {}).items())
    return (
        f"---\n{meta}---\n# Merged model\n\n{intro.strip()}\n\n{body}"
        f"## Source models\n\n{listed}\n\n"
        f"## Recipe\n\n```yaml\n{recipe_yaml}```\n\n"
        f"Made with evomerge {__version__}.\n"
    )


def read_front_matter(card: str) -> dict[str, Any]:
    """The metadata block of a card (what the Hub reads), as a mapping."""
    if not card.startswith("---\n"):
        return {}
    block = card[4:].split("\n---\n", 1)[0]
    data = yaml.safe_load(block)
    return data if isinstance(data, dict) else {}
