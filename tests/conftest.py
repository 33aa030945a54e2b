import os
from pathlib import Path

import pytest
import torch

# Two cores on the reference machines: pin torch to them so tests do not oversubscribe.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small toy family (seconds to build), in a cache that subprocesses see too."""
    from evomerge.toy import ensure_family

    cache = tmp_path_factory.mktemp("toy-cache")
    ensure_family(size="small", cache_dir=cache, threads=1)
    os.environ["EVOMERGE_CACHE"] = str(cache)
    return cache
