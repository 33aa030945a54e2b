"""Memory and seconds of in-memory candidate merges, as the search runs them, per source tree.

    python scripts/bench_search_memory.py --family DIR [--params 1e9] [--candidates 4]
        [--tree NAME=PATH ...] [--task-vector-bytes N ...] [--repetitions 1] [--json FILE]

DIR holds a base and three "fine-tunes" (base + seeded noise; bf16 Llama checkpoints of about
--params parameters, generated into DIR when missing, as scripts/bench_merge.py's family). The
sources are read once first, so the page cache holds them. For each tree (`NAME=PATH`: a source
tree of evomerge, e.g. a worktree of an earlier commit; default: this one) and task-vector
budget, a child process with PATH on PYTHONPATH and one torch thread (started as `python -m
evomerge` starts: the tree's evomerge/__main__.py is imported before torch) builds the live model (bf16,
the checkpoint's config, as the vLLM path's host copy), one SourceCache(preload=True), and merges
--candidates dare_ties recipes into it with merge_into_model (seeded random weights and
densities per source; `drop_scheme: counter`, as the search writes, where the tree knows the
key). A thread in the child polls /proc/self/status every 20 ms for RssAnon and RssFile; VmHWM
gives the peak RSS. Trees alternate per repetition.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

SOURCES = ("ft1", "ft2", "ft3")
POLL_S = 0.02


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


class Poller:
    """Peak RssAnon and RssFile of this process, polled from a thread."""

    def __init__(self) -> None:
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            status = _status()
            for key in self.peak:
                self.peak[key] = max(self.peak[key], status[key])
            time.sleep(POLL_S)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def recipe_text(family: Path, candidate: int, with_scheme: bool) -> str:
    rng = random.Random(candidate)
    head = f"merge_method: dare_ties\nbase_model: {family / 'base'}\ndtype: bfloat16\n"
    head += "random_seed: 0\n" + ("drop_scheme: counter\n" if with_scheme else "")
    models = "".join(
        f"  - {{model: {family / s}, parameters: "
        f"{{weight: {rng.uniform(0.2, 1.0):.4f}, density: {rng.uniform(0.1, 1.0):.4f}}}}}\n"
        for s in SOURCES
    )
    return head + "models:\n" + models


def child(family: Path, candidates: int, task_vector_bytes: int | None) -> dict[str, Any]:
    importlib.import_module("evomerge.__main__")  # its environment defaults, before torch loads
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from evomerge import recipe as recipe_module
    from evomerge.merge import MergeOptions, SourceCache, merge_into_model
    from evomerge.recipe import load_recipe

    torch.set_num_threads(1)
    poller = Poller()
    imports = _status()["RssAnon"]
    config = AutoConfig.from_pretrained(family / "base")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model = model.to_empty(device="cpu")
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    live = _status()["RssAnon"]
    kwargs = {} if task_vector_bytes is None else {"task_vector_bytes": task_vector_bytes}
    cache = SourceCache(preload=True, **kwargs)
    with_scheme = "drop_scheme" in getattr(recipe_module, "_TOP_KEYS", ())
    seconds = []
    for c in range(candidates):
        recipe = load_recipe(recipe_text(family, c, with_scheme))
        start = time.perf_counter()
        merge_into_model(recipe, model, MergeOptions(random_seed=0), cache)
        seconds.append(time.perf_counter() - start)
    peak = poller.stop()
    return {
        "seconds": [round(s, 2) for s in seconds],
        "model_bytes": model_bytes,
        "anon_after_imports": imports,
        "anon_with_live_model": live,
        "peak_anon": peak["RssAnon"],
        "peak_file": peak["RssFile"],
        "peak_rss_polled": peak["VmRSS"],
        "vm_hwm": _status()["VmHWM"],
        "drop_scheme": "counter" if with_scheme else "torch_cpu",
    }


def ensure_family(family: Path, params: float) -> None:
    # the parent only: a child imports evomerge from its tree's PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evomerge_dev: not installed
    from evomerge_dev.bench.checkpoints import config_for, generate

    config = config_for(params)
    generate(family / "base", config, seed=0, base_seed=None, shard_size=10**9)
    for k, name in enumerate(SOURCES, start=1):
        generate(family / name, config, seed=k, base_seed=0, shard_size=10**9)


def warm(family: Path) -> None:
    for name in ("base", *SOURCES):
        for file in (family / name).glob("*.safetensors"):
            with open(file, "rb") as f:
                while f.read(1 << 24):
                    pass


def run_child(tree: Path, family: Path, candidates: int, budget: int | None) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    cmd = [sys.executable, __file__, "--family", str(family), "--child", str(candidates)]
    if budget is not None:
        cmd += ["--task-vector-bytes", str(budget)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} (tree {tree}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--family", type=Path, required=True)
    p.add_argument("--params", type=float, default=1e9)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--tree", action="append", default=[], help="NAME=PATH (repeatable)")
    p.add_argument("--task-vector-bytes", type=int, nargs="*", default=None)
    p.add_argument("--repetitions", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        budget = args.task_vector_bytes[0] if args.task_vector_bytes else None
        print(json.dumps(child(args.family, args.child, budget)))
        return
    ensure_family(args.family, args.params)
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(Path(__file__).parents[1])}
    budgets = args.task_vector_bytes or [None]
    warm(args.family)
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(args.repetitions):
        order = list(trees.items()) if rep % 2 == 0 else list(trees.items())[::-1]
        for name, tree in order:
            for budget in budgets:
                label = name if budget is None else f"{name} tv={budget}"
                result = run_child(Path(tree), args.family, args.candidates, budget)
                runs.setdefault(label, []).append(result)
                print(label, json.dumps(result), flush=True)
    out = {
        "command": "python scripts/bench_search_memory.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "source_gb_each": sum(
            f.stat().st_size for f in (args.family / "base").glob("*.safetensors")
        )
        / 1e9,
        "runs": runs,
        "summary": {label: summarize(rs) for label, rs in runs.items()},
    }
    print(json.dumps(out["summary"], indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The first candidate (fills what the cache keeps) apart from the later ones."""
    later = [s for r in results for s in r["seconds"][1:]]
    return {
        "first_candidate_s": statistics.median(r["seconds"][0] for r in results),
        "later_candidates_median_s": statistics.median(later) if later else None,
        "peak_anon_gb": max(r["peak_anon"] for r in results) / 1e9,
        "anon_with_live_model_gb": max(r["anon_with_live_model"] for r in results) / 1e9,
        "model_gb": results[0]["model_bytes"] / 1e9,
        "peak_rss_gb": max(r["vm_hwm"] for r in results) / 1e9,
        "peak_file_gb": max(r["peak_file"] for r in results) / 1e9,
    }


if __name__ == "__main__":
    main()
