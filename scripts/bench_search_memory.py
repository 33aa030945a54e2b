"""Memory and seconds of in-memory candidate merges, as the search runs them, per source tree.

    python scripts/bench_search_memory.py --family DIR [--params 1e9] [--hidden 2048] [--candidates 4]
        [--tree NAME=PATH ...] [--task-vector-bytes N ...] [--threads 1 2] [--repetitions 1]
        [--json FILE]

DIR holds a base and three "fine-tunes" (base + seeded noise; bf16 Llama checkpoints of about
--params parameters, generated into DIR when missing, as scripts/bench_merge.py's family). The
sources are read once first, so the page cache holds them. For each tree (`NAME=PATH`: a source
tree of evomerge, e.g. a worktree of an earlier commit; default: this one) and task-vector
budget and thread count (--threads, default 1), a child process with PATH on PYTHONPATH and
that many torch threads (started as `python -m
evomerge` starts: the tree's evomerge/__main__.py is imported before torch) builds the live model (bf16,
the checkpoint's config, as the vLLM path's host copy), one SourceCache(preload=True), and merges
--candidates dare_ties recipes into it with merge_into_model (seeded random weights and
densities per source; `drop_scheme: counter`, as the search writes, where the tree knows the
key). A thread in the child polls /proc/self/status every 20 ms for RssAnon and RssFile; VmHWM
gives the peak RSS. Trees alternate per repetition.

The floor (`floor Nt` rows) is a child of this tree that loads the four checkpoints into memory
once (as the preloaded cache holds them) and per candidate reads every source tensor once (a
sum) and writes the live model once (a copy of the base): the memory traffic a merge cannot
avoid. Each row's `vs_floor` is its later candidates' median over the floor's, same threads.
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


def child(
    family: Path, candidates: int, task_vector_bytes: int | None, threads: int, floor: bool
) -> dict[str, Any]:
    importlib.import_module("evomerge.__main__")  # its environment defaults, before torch loads
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(threads)
    poller = Poller()
    imports = _status()["RssAnon"]
    config = AutoConfig.from_pretrained(family / "base")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model = model.to_empty(device="cpu")
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    live = _status()["RssAnon"]
    if floor:
        seconds, with_scheme = floor_candidates(family, model, candidates), False
    else:
        seconds, with_scheme = merge_candidates(family, model, candidates, task_vector_bytes)
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


def merge_candidates(
    family: Path, model: Any, candidates: int, task_vector_bytes: int | None
) -> tuple[list[float], bool]:
    """Seconds of each candidate merged into `model`; whether the recipes name the scheme."""
    from evomerge import recipe as recipe_module
    from evomerge.merge import MergeOptions, SourceCache, merge_into_model
    from evomerge.recipe import load_recipe

    kwargs = {} if task_vector_bytes is None else {"task_vector_bytes": task_vector_bytes}
    cache = SourceCache(preload=True, **kwargs)
    with_scheme = "drop_scheme" in getattr(recipe_module, "_TOP_KEYS", ())
    seconds = []
    for c in range(candidates):
        recipe = load_recipe(recipe_text(family, c, with_scheme))
        start = time.perf_counter()
        merge_into_model(recipe, model, MergeOptions(random_seed=0), cache)
        seconds.append(time.perf_counter() - start)
    return seconds, with_scheme


def floor_candidates(family: Path, model: Any, candidates: int) -> list[float]:
    """Seconds of each floor pass: every source tensor read once, the live model written once."""
    import torch
    from safetensors.torch import load_file

    def load(name: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for file in sorted((family / name).glob("*.safetensors")):
            out.update(load_file(file))
        return out

    base, sources = load("base"), [load(s) for s in SOURCES]
    targets = dict(model.named_parameters())
    seconds = []
    with torch.no_grad():
        for _ in range(candidates):
            start = time.perf_counter()
            for name, target in targets.items():
                for source in sources:
                    source[name].sum()
                target.copy_(base[name])
            seconds.append(time.perf_counter() - start)
    return seconds


def ensure_family(family: Path, params: float, hidden: int) -> None:
    # the parent only: a child imports evomerge from its tree's PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evomerge_dev: not installed
    from evomerge_dev.bench.checkpoints import config_for, generate

    config = config_for(params, hidden=hidden)
    generate(family / "base", config, seed=0, base_seed=None, shard_size=10**9)
    for k, name in enumerate(SOURCES, start=1):
        generate(family / name, config, seed=k, base_seed=0, shard_size=10**9)


def warm(family: Path) -> None:
    for name in ("base", *SOURCES):
        for file in (family / name).glob("*.safetensors"):
            with open(file, "rb") as f:
                while f.read(1 << 24):
                    pass


def run_child(
    tree: Path, family: Path, candidates: int, budget: int | None, threads: int, floor: bool
) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1")
    cmd = [sys.executable, __file__, "--family", str(family), "--child", str(candidates)]
    cmd += ["--threads", str(threads)] + (["--floor"] if floor else [])
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
    p.add_argument("--hidden", type=int, default=2048, help="width (vocabulary 32000)")
    p.add_argument("--tree", action="append", default=[], help="NAME=PATH (repeatable)")
    p.add_argument("--task-vector-bytes", type=int, nargs="*", default=None)
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--repetitions", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        budget = args.task_vector_bytes[0] if args.task_vector_bytes else None
        threads = args.threads[0]
        print(json.dumps(child(args.family, args.child, budget, threads, args.floor)))
        return
    ensure_family(args.family, args.params, args.hidden)
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(Path(__file__).parents[1])}
    budgets = args.task_vector_bytes or [None]
    warm(args.family)
    runs = measure(args, trees, budgets)
    out = {
        "command": "python scripts/bench_search_memory.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "source_gb_each": sum(
            f.stat().st_size for f in (args.family / "base").glob("*.safetensors")
        )
        / 1e9,
        "runs": runs,
        "summary": with_floor_ratios({label: summarize(rs) for label, rs in runs.items()}),
    }
    print(json.dumps(out["summary"], indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")


def measure(
    args: argparse.Namespace, trees: dict[str, str], budgets: list[int | None]
) -> dict[str, list[dict[str, Any]]]:
    """Runs per label `NAME[ tv=B] Nt` (and `floor Nt`), trees alternating per repetition."""
    this = Path(__file__).resolve().parents[1]
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(args.repetitions):
        order = list(trees.items()) if rep % 2 == 0 else list(trees.items())[::-1]
        for threads in args.threads:
            result = run_child(this, args.family, args.candidates, None, threads, True)
            runs.setdefault(f"floor {threads}t", []).append(result)
            print(f"floor {threads}t", json.dumps(result), flush=True)
            for name, tree in order:
                for budget in budgets:
                    label = name if budget is None else f"{name} tv={budget}"
                    label += f" {threads}t"
                    result = run_child(
                        Path(tree), args.family, args.candidates, budget, threads, False
                    )
                    runs.setdefault(label, []).append(result)
                    print(label, json.dumps(result), flush=True)
    return runs


def with_floor_ratios(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each row's later candidates' median over the floor's at the same thread count."""
    for label, row in summary.items():
        floor = summary.get(f"floor {label.rsplit(' ', 1)[-1]}", {})
        ours, theirs = row["later_candidates_median_s"], floor.get("later_candidates_median_s")
        row["vs_floor"] = ours / theirs if ours and theirs else None
    return summary


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
