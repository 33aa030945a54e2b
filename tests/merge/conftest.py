from pathlib import Path

import pytest

from evomerge_dev.testing import make_tiny_llama


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base and three 'fine-tunes' of it (base + seeded noise), one of them sharded."""
    root = tmp_path_factory.mktemp("family")
    base = make_tiny_llama(root / "base", seed=0, num_layers=3)
    return {
        "base": base,
        "a": make_tiny_llama(root / "a", seed=1, base=base),
        "b": make_tiny_llama(root / "b", seed=2, base=base, shards=3),
        "c": make_tiny_llama(root / "c", seed=3, base=base),
    }
