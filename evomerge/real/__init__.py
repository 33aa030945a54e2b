"""Real pretrained models offline: packaged files converted once into the cache
(`packaged:<name>` references), and the data of the real-model specialists' tasks.

from evomerge.real import ensure_packaged
ensure_packaged("smollm2")   # -> the cached Hugging Face checkpoint directory
"""

from evomerge.real.packaged import (
    PACKAGED_PREFIX,
    REGISTRY,
    PackagedModel,
    ensure_packaged,
    packaged_model,
    read_manifest,
    source_file,
)

__all__ = [
    "PACKAGED_PREFIX",
    "REGISTRY",
    "PackagedModel",
    "ensure_packaged",
    "packaged_model",
    "read_manifest",
    "source_file",
]
