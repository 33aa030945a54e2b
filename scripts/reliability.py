"""Reliability figures: SIGKILLed searches and merges, recipe fuzzing, corrupted shards,
hostile inputs (the `hostile` part: scripts/hostile_inputs.py, writes <out>/hostile.json).

    OMP_NUM_THREADS=1 python scripts/reliability.py [--search-kills 20] [--merge-kills 10]
        [--parts fuzz,shards,merge,search,hostile]
        [--fuzz 5000] [--samplers pycma,cmaes] [--out results/reliability]

Prints a line per check and writes the numbers to <out>/reliability-<parts>.json. Runs on the small
toy family (built into a cache on first use); everything is one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import HealthCheck, given, settings

from evomerge.errors import MergeError, RecipeError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evomerge_dev: not installed
from evomerge.toy import ensure_family
from evomerge_dev.reliability import as_dict, kill_merges, kill_search, ties_recipe
from evomerge_dev.testing import SMALL_SEARCH, make_tiny_llama
from evomerge_dev.testing_fuzz import check_recipe_text, recipe_texts

SEARCH = [
    *SMALL_SEARCH,
    "heartbeat_s=1",
    "score_test=false",
]


def search_figures(root: Path, samplers: list[str], kills: int, budget: int) -> dict:
    out = {}
    for sampler in samplers:
        r = kill_search(
            root / sampler, [*SEARCH, f"optimizer={sampler}"], budget=budget, kills=kills, seed=0
        )
        out[sampler] = as_dict(r)
        print(
            f"search {sampler:6s} kills={r.kills} mid-candidate={r.mid_candidate} "
            f"completed lost={r.completed_lost} counted={r.counted}/{r.budget} "
            f"same best as uninterrupted={r.same_best} "
            f"(ref {r.reference_best and r.reference_best[0]}, "
            f"killed {r.killed_best and r.killed_best[0]}) "
            f"genomes in common={r.same_genomes}/{r.budget} [{r.seconds} s]",
            flush=True,
        )
    return out


def merge_figures(root: Path, kills: int) -> dict:
    recipe = ties_recipe(root, num_layers=8, hidden_size=256, shards=4)
    r = kill_merges(recipe, root, kills=kills, seed=0, extra=["--shard-size", "2MB"])
    print(
        f"merge kills={r.kills} absent={r.absent} complete={r.complete} "
        f"half-written={r.half_written} (.partial dirs left: {r.partial_left}; "
        f"one merge {r.seconds_per_merge} s)",
        flush=True,
    )
    return as_dict(r)


def fuzz_figures(n: int) -> dict:
    counts = {"parsed": 0, "RecipeError": 0}
    start = time.monotonic()

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(recipe_texts())
    def run(text: str) -> None:
        result = check_recipe_text(text)  # raises anything but a RecipeError with a key path
        counts["RecipeError" if isinstance(result, RecipeError) else "parsed"] += 1

    run()
    seconds = round(time.monotonic() - start, 1)
    print(f"fuzz recipes={sum(counts.values())} {counts} other exceptions=0 [{seconds} s]")
    return {**counts, "seconds": seconds}


def shard_figures() -> dict:
    """The corruption cases of tests/merge/test_corrupt_shards.py, counted."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests/merge/test_corrupt_shards.py"
    spec = importlib.util.spec_from_file_location("corrupt", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from evomerge.merge import merge_to_disk
    from evomerge.recipe import parse_recipe

    named = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, corrupt) in enumerate(sorted(module.CORRUPTIONS.items())):
            root = Path(tmp) / str(i)
            base = make_tiny_llama(root / "base", seed=0)
            other = make_tiny_llama(root / "other", seed=1, base=base, shards=2)
            shard = sorted(other.glob("*.safetensors"))[-1]
            shard.write_bytes(corrupt(shard.read_bytes()))
            models = [{"model": str(m), "parameters": {"weight": 0.5}} for m in (base, other)]
            try:
                merge_to_disk(
                    parse_recipe({"merge_method": "linear", "models": models}), root / "o"
                )
                print(f"  {name}: NOT DETECTED")
            except MergeError as e:
                named += str(shard) in str(e)
    print(f"shards corruptions={len(module.CORRUPTIONS)} MergeError naming the file={named}")
    return {"cases": len(module.CORRUPTIONS), "named": named}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search-kills", type=int, default=20)
    parser.add_argument("--search-budget", type=int, default=60)
    parser.add_argument("--samplers", default="pycma,cmaes")
    parser.add_argument("--merge-kills", type=int, default=10)
    parser.add_argument("--fuzz", type=int, default=5000)
    parser.add_argument("--parts", default="fuzz,shards,merge,search")
    parser.add_argument("--out", type=Path, default=Path("results/reliability"))
    args = parser.parse_args()
    parts = args.parts.split(",")
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    )
    figures: dict = {}
    if "fuzz" in parts:
        figures["fuzz"] = fuzz_figures(args.fuzz)
    if "shards" in parts:
        figures["shards"] = shard_figures()
    if "merge" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            figures["merge"] = merge_figures(Path(tmp), args.merge_kills)
    if "hostile" in parts:  # its own process: the RSS it reports is then the cases' own
        script = Path(__file__).with_name("hostile_inputs.py")
        subprocess.run([sys.executable, str(script), "--out", str(args.out)], check=True)
        figures["hostile"] = json.loads((args.out / "hostile.json").read_text())["summary"]
    if "search" in parts:
        ensure_family(size="small", threads=1)
        with tempfile.TemporaryDirectory() as tmp:
            figures["search"] = search_figures(
                Path(tmp), args.samplers.split(","), args.search_kills, args.search_budget
            )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"reliability-{'-'.join(parts)}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
