"""Try mergekit-evolve (0.1.5) on the toy family and task, on this machine, and record why it
runs or how it fails. Used by scripts/bench_mergekit_evolve.py.

Stages, each a child process with a time limit (its exit code and the tail of its output are
the record):
- `as_installed`: the `mergekit-evolve` command as a user would run it on CPU
  (`--no-merge-cuda`).
- `vllm_stub`: the same, after registering an empty `lm_eval.models.vllm_causallms` module
  (mergekit's actors.py names `lm_eval.models.vllm_causallms.VLLM` at import; vLLM is a GPU
  package and is not installed), to find the next blocker.
- `fake_gpu`: also starts Ray with one advertised GPU (`ray.init(num_gpus=1)`), since every
  evaluation strategy asks Ray for `num_gpus=1` per actor or task, and registers the stub in
  each Ray worker too (a setup hook); merges stay on CPU.
The stubs live only in the child process; nothing in mergekit or lm-eval is modified.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STAGES = ("as_installed", "vllm_stub", "fake_gpu")

_STUB = "from evomerge_dev.bench.evolve_peer import stub_vllm_module; stub_vllm_module(); "
# Ray workers import mergekit afresh, so they need the stub too: Ray runs this hook in each.
_FAKE_GPU = (
    "import ray; ray.init(num_gpus=1, include_dashboard=False, runtime_env={"
    "'worker_process_setup_hook': 'evomerge_dev.bench.evolve_peer.stub_vllm_module'}); "
)
_MAIN = "from mergekit.scripts.evolve import main; sys.argv[0] = 'mergekit-evolve'; main()"


def stub_vllm_module() -> None:
    """Register an empty `lm_eval.models.vllm_causallms` (with a `VLLM` class) in this process."""
    import types

    import lm_eval.models

    module = types.ModuleType("lm_eval.models.vllm_causallms")
    module.VLLM = type("VLLM", (), {})  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    lm_eval.models.vllm_causallms = module


def evolve_config(family: Path, task: str, limit: int | None) -> str:
    """A minimal mergekit-evolve config: the toy specialists over the toy base, dare_ties,
    one genome slice per layer, the toy task's `acc` metric; no chat template (the toy
    tokenizer has none)."""
    lines = [
        "genome:",
        "  models:",
        f"    - {family / 'math_en'}",
        f"    - {family / 'lang_ja'}",
        f"  base_model: {family / 'base'}",
        "  merge_method: dare_ties",
        "  layer_granularity: 1",
        "  normalize: false",
        "tasks:",
        f"  - name: {task}",
        "    metric: acc,none",
        "apply_chat_template: false",
        "fewshot_as_multiturn: false",
    ]
    if limit is not None:
        lines.append(f"limit: {limit}")
    return "\n".join(lines) + "\n"


def command(stage: str, config: Path, storage: Path, tasks_dir: Path, fevals: int) -> list[str]:
    args = [
        str(config),
        "--storage-path",
        str(storage),
        "--task-search-path",
        str(tasks_dir),
        "--no-merge-cuda",
        "--max-fevals",
        str(fevals),
        "--no-reshard",
    ]
    if stage == "as_installed":
        return [str(Path(sys.executable).parent / "mergekit-evolve"), *args]
    if stage == "fake_gpu":
        args += ["--num-gpus", "1"]
    prelude = _STUB + (_FAKE_GPU if stage == "fake_gpu" else "")
    return [sys.executable, "-c", "import sys; " + prelude + _MAIN, *args]


def attempt(
    stage: str,
    work: Path,
    family: Path,
    tasks_dir: Path,
    *,
    task: str,
    fevals: int,
    limit: int | None,
    timeout_s: float,
    threads: int,
) -> dict[str, Any]:
    """Run one stage; returns its command, exit code (None: killed at the time limit),
    seconds and the last lines of its output."""
    run_dir = work / stage
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "evolve.yaml"
    config.write_text(evolve_config(family, task, limit))
    cmd = command(stage, config, run_dir / "storage", tasks_dir, fevals)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), RAY_DISABLE_USAGE_STATS="1")
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        code: int | None = proc.returncode
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code = None
        output = _text(e.stdout) + _text(e.stderr)
    seconds = time.perf_counter() - start
    tail = [line for line in output.splitlines() if line.strip()][-25:]
    return {
        "stage": stage,
        "command": cmd,
        "returncode": code,
        "seconds": seconds,
        "timed_out": code is None,
        "config": config.read_text(),
        "output_tail": tail,
    }


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
