from pathlib import Path

import pytest

from evomerge.toy import ToyFamily, ensure_family


@pytest.fixture(scope="session")
def small_family(tmp_path_factory: pytest.TempPathFactory) -> ToyFamily:
    """The small toy family, built once per test session (a few seconds, one thread)."""
    cache: Path = tmp_path_factory.getbasetemp() / "toy-cache"
    return ensure_family("small", cache_dir=cache, threads=1)
