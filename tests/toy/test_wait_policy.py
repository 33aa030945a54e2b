"""`python -m evomerge` makes torch's OpenMP threads wait passively; the family's bytes stay."""

import os
import subprocess
import sys

import pytest

# The first steps of the full family's base, as the build trains them (2 threads), in a child
# whose OpenMP runtime reads OMP_WAIT_POLICY as it loads: prints a SHA-256 of the weights.
_STEPS = """
import contextlib, hashlib, sys
import evomerge.__main__  # as `python -m evomerge`: its environment defaults first
import torch
from evomerge.toy.build import torch_threads
from evomerge.toy.family import BASE_MIX, family_config, make_model, train

class Stop(Exception):
    pass

cfg, seen = family_config("full"), []
def tick(loss):
    seen.append(loss)
    if len(seen) == 3:
        raise Stop
with torch_threads(cfg.threads):
    model = make_model(cfg)
    with contextlib.suppress(Stop):
        train(model, BASE_MIX, steps=cfg.base_steps, lr=cfg.base_lr, cfg=cfg,
              seed=cfg.data_seed, on_step=tick)
digest = hashlib.sha256()
for name, t in sorted(model.state_dict().items()):
    digest.update(name.encode() + t.contiguous().view(torch.uint8).numpy().tobytes())
import os
print(os.environ.get("OMP_WAIT_POLICY"), digest.hexdigest())
"""


def _run(policy: str | None) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    done = subprocess.run(
        [sys.executable, "-c", _STEPS], env=env, capture_output=True, text=True, check=True
    )
    seen, digest = done.stdout.split()
    return seen, digest


def test_python_m_evomerge_waits_passively_unless_told() -> None:
    code = "import evomerge.__main__, os; print(os.environ['OMP_WAIT_POLICY'])"
    for policy, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        env.update({"OMP_WAIT_POLICY": policy} if policy else {})
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert done.stdout.strip() == expected


@pytest.mark.slow  # spinning threads on a busy 2-core machine: minutes
def test_passive_and_active_waits_train_the_same_bytes() -> None:
    default, passive_bytes = _run(None)
    assert default == "PASSIVE"  # set by evomerge/__main__.py before torch loads
    chosen, active_bytes = _run("ACTIVE")  # a user's own setting wins
    assert chosen == "ACTIVE"
    assert passive_bytes == active_bytes
