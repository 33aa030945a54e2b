import os
from pathlib import Path

import pytest

from evomerge.toy import ensure_family


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small toy family (seconds to build), in a cache that subprocesses see too."""
    cache = tmp_path_factory.mktemp("toy-cache")
    ensure_family(size="small", cache_dir=cache, threads=1)
    os.environ["EVOMERGE_CACHE"] = str(cache)
    return cache
