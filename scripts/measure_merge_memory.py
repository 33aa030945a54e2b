"""Peak memory and wall time of an evomerge merge of three ~1 GB same-architecture checkpoints.

    OMP_NUM_THREADS=1 python scripts/measure_merge_memory.py CACHE_DIR [--method ties]
        [--shard-size 1GB] [--dtype bfloat16]

The checkpoints (a base and two "fine-tunes" = base + seeded noise, Llama layout, ~540M
parameters each) are generated deterministically into CACHE_DIR on first use, one tensor at a
time. The merge runs in a child process so its peak RSS (VmHWM) is its own; the child also
reports its RSS after imports, before merging.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evomerge_dev: not installed
from evomerge.merge.io import parse_size
from evomerge_dev.bench import checkpoints

# ~540M parameters: 1.07 GB in bfloat16, 2.1 GB in float32 (the benchmark family's layout,
# TinyLlama widths, at 9 layers).
NUM_LAYERS = 9


def config_for(dtype: str) -> dict:
    config = checkpoints.config_for(1, dtype)
    config["num_hidden_layers"] = NUM_LAYERS
    return config


def generate(path: Path, *, seed: int, dtype: str, base_seed: int | None) -> Path:
    """One checkpoint of the benchmark family's generator (cached: skipped when it exists)."""
    config = config_for(dtype)
    return checkpoints.generate(
        path, config, seed=seed, base_seed=base_seed, shard_size=parse_size("500MB")
    )


def _status_kb(field: str) -> int:
    """VmRSS / VmHWM of this process (VmHWM, unlike ru_maxrss, is not inherited from the
    parent across fork/exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def child(recipe_path: str, out_dir: str, shard_size: int) -> None:
    from evomerge.merge import MergeOptions, merge_to_disk
    from evomerge.recipe import load_recipe

    recipe = load_recipe(Path(recipe_path))
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    merge_to_disk(recipe, out_dir, MergeOptions(shard_size=shard_size))
    wall = time.perf_counter() - start
    print(json.dumps({"wall_s": wall, "rss_before_kb": before, "peak_rss_kb": _status_kb("VmHWM")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--method", default="ties", choices=["ties", "task_arithmetic", "linear"])
    parser.add_argument("--shard-size", default="1GB")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument(
        "--child", nargs=3, metavar=("RECIPE", "OUT", "SHARD"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    root = args.cache_dir / args.dtype
    start = time.perf_counter()
    base = generate(root / "base", seed=0, dtype=args.dtype, base_seed=None)
    tuned = [generate(root / f"ft{k}", seed=k, dtype=args.dtype, base_seed=0) for k in (1, 2)]
    print(f"checkpoints ready in {time.perf_counter() - start:.1f} s")
    params = "{weight: 0.5, density: 0.5}" if args.method == "ties" else "{weight: 0.5}"
    models = "".join(f"  - {{model: {m}, parameters: {params}}}\n" for m in tuned)
    recipe = f"merge_method: {args.method}\nbase_model: {base}\nmodels:\n{models}"
    if args.method == "linear":
        recipe = (
            recipe.replace(f"base_model: {base}\n", "")
            + f"  - {{model: {base}, parameters: {params}}}\n"
        )
    work = args.cache_dir / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "recipe.yaml").write_text(recipe)
    shard = parse_size(args.shard_size)
    cmd = [
        sys.executable,
        __file__,
        args.cache_dir.as_posix(),
        "--child",
        str(work / "recipe.yaml"),
        str(work / "out"),
        str(shard),
    ]
    result = json.loads(
        subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
    )
    sizes = [sum(f.stat().st_size for f in p.glob("*.safetensors")) for p in (base, *tuned)]
    largest = max(_numel(s) for _, s in checkpoints.tensor_shapes(config_for(args.dtype)))
    report = {
        "method": args.method,
        "dtype": args.dtype,
        "sources": 3,
        "input_gb_each": round(sizes[0] / 1e9, 3),
        "input_gb_total": round(sum(sizes) / 1e9, 3),
        "shard_size_gb": shard / 1e9,
        "largest_tensor_mb_fp32": round(largest * 4 / 1e6, 1),
        "wall_s": round(result["wall_s"], 1),
        "rss_after_imports_mb": round(result["rss_before_kb"] / 1024, 0),
        "peak_rss_mb": round(result["peak_rss_kb"] / 1024, 0),
    }
    print(json.dumps(report, indent=2))
    shutil.rmtree(work)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    main()
