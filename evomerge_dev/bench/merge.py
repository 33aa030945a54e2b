"""Merge speed and memory against mergekit: same recipes, same checkpoints, one run.

Each merge runs in a child process (as a user would run it); its wall time is measured from
start to exit and its peak RSS by polling VmHWM (the high-water mark, so a short poll interval
only misses growth in the last interval before exit) over the child and its descendants.
Tools (mergekit, evomerge from each source tree) and methods are interleaved repetition by
repetition, so background load on a shared machine hits them alike; figures are medians over
repetitions. The floor is a whole process too, with evomerge's durability: start Python and
torch, read every input once, write one output of the merge's size and fsync it.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from evomerge.merge.io import CheckpointReader

METHODS = (
    "linear",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "slerp",
    "della",
    "breadcrumbs_ties",
)
POLL_S = 0.02
MERGEKIT = "mergekit"
PARAMS = {  # per fine-tune; the rest weight 0.5, density 0.5
    "task_arithmetic": "{weight: 0.5}",
    "della": "{weight: 0.5, density: 0.5, epsilon: 0.1}",
    "breadcrumbs_ties": "{weight: 0.5, density: 0.5, gamma: 0.01}",
}
SEEDED = ("dare_ties", "della")
SELECTING = ("ties", "della", "breadcrumbs_ties")  # selection.TIE_RULE_METHODS benchmarked


def recipe_text(
    method: str, base: Path, ft1: Path, ft2: Path, dtype: str, tie_rule: str | None = None
) -> str:
    """The same YAML for both tools (mergekit ignores evomerge's extension keys): seeded
    methods with `drop_scheme: counter` and, given `tie_rule`, selecting ones with that rule
    (as the search writes them)."""
    head = f"merge_method: {method}\ndtype: {dtype}\n"
    if tie_rule is not None and method in SELECTING:
        head += f"tie_rule: {tie_rule}\n"
    if method == "linear":
        weighted = [(base, "{weight: 0.4}"), (ft1, "{weight: 0.3}"), (ft2, "{weight: 0.3}")]
        return (
            head
            + "models:\n"
            + "".join(f"  - {{model: {m}, parameters: {p}}}\n" for m, p in weighted)
        )
    if method == "slerp":
        return (
            head
            + f"base_model: {base}\nparameters: {{t: 0.5}}\nmodels:\n  - model: {base}\n  - model: {ft1}\n"
        )
    params = PARAMS.get(method, "{weight: 0.5, density: 0.5}")
    models = "".join(f"  - {{model: {m}, parameters: {params}}}\n" for m in (ft1, ft2))
    # evomerge's counter-based drops, as its search writes them (mergekit ignores the key)
    scheme = "drop_scheme: counter\n" if method in SEEDED else ""
    return head + scheme + f"base_model: {base}\nmodels:\n{models}"


@dataclass(frozen=True)
class Run:
    wall_s: float
    peak_rss_mb: float


def run_measured(cmd: Sequence[str], env: dict[str, str]) -> Run:
    """Run `cmd` to completion; wall seconds and peak RSS (sum of VmHWM over the tree)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        try:
            for p in [root, *root.children(recursive=True)]:
                peaks[p.pid] = max(peaks.get(p.pid, 0), _hwm_kb(p.pid))
        except (psutil.Error, OSError):
            pass  # a process exited between listing and reading
        time.sleep(POLL_S)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    return Run(wall, sum(peaks.values()) / 1024)


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def evomerge_command(recipe: Path, out: Path, threads: int, seed: int = 0) -> list[str]:
    """`python -m evomerge merge` on the CPU with `threads` threads for the arithmetic (the
    tree is the child's PYTHONPATH)."""
    return [
        sys.executable,
        "-m",
        "evomerge",
        "merge",
        str(recipe),
        str(out),
        "--device",
        "cpu",
        "--random-seed",
        str(seed),
        "--threads",
        str(threads),
        "--no-progress",
    ]


def tool_commands(recipe: Path, out: Path, threads: int, seed: int = 0) -> dict[str, list[str]]:
    """The two tools' command lines (CPU, one output shard at this size, same seed, `threads`
    threads for the arithmetic; mergekit with asynchronous writes, its fastest CPU setting)."""
    bindir = Path(sys.executable).parent
    return {
        "evomerge": evomerge_command(recipe, out / "evomerge", threads, seed),
        "mergekit": [
            str(bindir / "mergekit-yaml"),
            str(recipe),
            str(out / "mergekit"),
            "--no-cuda",
            "--num-threads",
            str(threads),
            "--async-write",
            "--write-threads",
            str(threads),
            "--random-seed",
            str(seed),
            "--quiet",
        ],
    }


def floor_command(inputs: Sequence[Path], out: Path) -> list[str]:
    code = (
        "import sys; from pathlib import Path; from evomerge_dev.bench.merge import floor_copy; "
        "floor_copy([Path(p) for p in sys.argv[1:-1]], Path(sys.argv[-1]))"
    )
    return [sys.executable, "-c", code, *map(str, inputs), str(out)]


def floor_copy(inputs: Sequence[Path], out: Path) -> None:
    """Read every tensor of every input with plain safetensors; write the first input's
    tensors as one output of the same size (shard by shard, as the inputs are laid out), and
    fsync the files and the directory (evomerge's durability: staging.py)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    _write_read_inputs(inputs, out, safe_open, save_file)
    for path in [*sorted(out.iterdir()), out, out.parent]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_read_inputs(inputs: Sequence[Path], out: Path, safe_open: Any, save_file: Any) -> None:
    for shard in sorted(inputs[0].glob("*.safetensors")):
        kept: dict[str, torch.Tensor] = {}
        for i, model in enumerate(inputs):
            with safe_open(model / shard.name, framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            if i == 0:
                kept = tensors
            del tensors
        save_file(kept, out / shard.name)
        del kept


def compare(evo: Path, mk: Path, base: Path) -> dict[str, float]:
    """Max |evomerge - mergekit| over all tensors; and, per tool, the share of entries that
    differ from the base and their mean |output - base| (DARE's invariants)."""
    a, b, c = (CheckpointReader.open(p) for p in (evo, mk, base))
    if set(a.names()) != set(b.names()):
        raise RuntimeError(f"tensor names differ: {sorted(set(a.names()) ^ set(b.names()))[:5]}")
    max_diff, n = 0.0, 0
    changed = {"evomerge": 0, "mergekit": 0}
    moved = {"evomerge": 0.0, "mergekit": 0.0}
    for name in a.names():
        x, y = a.read(name).float(), b.read(name).float()
        max_diff = max(max_diff, float((x - y).abs().max()))
        if name in c:
            z = c.read(name).float()
            for tool, t in (("evomerge", x), ("mergekit", y)):
                d = (t - z).abs()
                changed[tool] += int(torch.count_nonzero(d))
                moved[tool] += float(d.sum(dtype=torch.float64))
            n += z.numel()
    out = {"max_abs_diff": max_diff}
    for tool in changed:
        out[f"{tool}_changed_share"] = changed[tool] / n
        out[f"{tool}_mean_abs_delta"] = moved[tool] / n
    return out


def _env(threads: int, tree: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[key] = str(threads)
    env["TQDM_DISABLE"] = "1"
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def warm_page_cache(models: Sequence[Path]) -> None:
    """Read every weight file once so every run starts with the inputs in the page cache."""
    for model in models:
        for file in model.glob("*.safetensors"):
            with open(file, "rb") as f:
                while f.read(1 << 24):
                    pass


def knows_tie_rule(tree: Path) -> bool:
    """Whether the source tree's recipes take `tie_rule` (trees before it reject the key)."""
    recipe = tree / "evomerge" / "recipe.py"
    return recipe.is_file() and '"tie_rule"' in recipe.read_text()


def write_recipes(
    work: Path,
    models: tuple[Path, Path, Path],
    methods: Sequence[str],
    trees: dict[str, Path],
    dtype: str,
    tie_rule: str | None,
) -> dict[tuple[str, str], Path]:
    """{(method, tool): recipe}: mergekit's, and each tree's (with `tie_rule` where it knows
    the key)."""
    recipes = {}
    for method in methods:
        for tool in (MERGEKIT, *trees):
            rule = tie_rule if tool != MERGEKIT and knows_tie_rule(trees[tool]) else None
            recipes[method, tool] = work / f"{method}-{tool}.yaml"
            recipes[method, tool].write_text(recipe_text(method, *models, dtype, rule))
    return recipes


def run_benchmark(
    models: tuple[Path, Path, Path],
    work: Path,
    *,
    methods: Sequence[str] = METHODS,
    repetitions: int = 3,
    threads: Sequence[int] = (1,),
    dtype: str = "bfloat16",
    trees: dict[str, Path] | None = None,
    tie_rule: str | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Interleaved runs of evomerge (per source tree), mergekit and the floor per method and
    thread count; medians and diffs (the first tree against mergekit). Rows: `method/Nt`."""
    trees = trees or {"evomerge": Path(__file__).resolve().parents[2]}
    work.mkdir(parents=True, exist_ok=True)
    recipes = write_recipes(work, models, methods, trees, dtype, tie_rule)
    warm_page_cache(models)
    tools = [*trees, MERGEKIT]
    labels = {(m, t): f"{m}/{t}t" for m in methods for t in threads}
    runs: dict[str, dict[str, list[Run]]] = {
        label: {tool: [] for tool in tools} for label in labels.values()
    }
    floor: list[Run] = []
    diffs: dict[str, dict[str, float]] = {}
    for rep in range(repetitions):
        floor.append(_floor_run(models, work, threads[0]))
        log(f"rep {rep} floor {floor[-1].wall_s:.1f} s")
        for (method, t), label in labels.items():
            out = work / method
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
            for tool in order:
                cmd = _command(tool, recipes[method, tool], out / tool, t)
                tree = trees.get(tool)
                runs[label][tool].append(run_measured(cmd, _env(t, tree)))
                r = runs[label][tool][-1]
                log(f"rep {rep} {label} {tool} {r.wall_s:.1f} s {r.peak_rss_mb:.0f} MB")
            if method not in diffs:
                diffs[method] = compare(out / tools[0], out / MERGEKIT, models[0])
                log(f"{method} diff {diffs[method]}")
            shutil.rmtree(out)
    by_label = {label: diffs[m] for (m, _), label in labels.items()}
    return _summary(runs, floor, by_label, models, list(threads), dtype, repetitions)


def _floor_run(models: tuple[Path, Path, Path], work: Path, threads: int) -> Run:
    out = work / "floor"
    shutil.rmtree(out, ignore_errors=True)
    run = run_measured(floor_command(models, out), _env(threads))
    shutil.rmtree(out)
    return run


def _command(tool: str, recipe: Path, out: Path, threads: int) -> list[str]:
    if tool == MERGEKIT:
        return tool_commands(recipe, out.parent, threads)[MERGEKIT]
    return evomerge_command(recipe, out, threads)


def _summary(
    runs: dict[str, dict[str, list[Run]]],
    floor: list[Run],
    diffs: dict[str, dict[str, float]],
    models: tuple[Path, Path, Path],
    threads: list[int],
    dtype: str,
    repetitions: int,
) -> dict[str, Any]:
    def med(rs: list[Run]) -> dict[str, Any]:
        return {
            "median_wall_s": statistics.median(r.wall_s for r in rs),
            "median_peak_rss_mb": statistics.median(r.peak_rss_mb for r in rs),
            "wall_s": [round(r.wall_s, 2) for r in rs],
            "peak_rss_mb": [round(r.peak_rss_mb) for r in rs],
        }

    floor_s = statistics.median(r.wall_s for r in floor)
    methods = {}
    for method, by_tool in runs.items():
        row: dict[str, Any] = {tool: med(rs) for tool, rs in by_tool.items()}
        mk = row[MERGEKIT]["median_wall_s"]
        for tool in by_tool:
            if tool != MERGEKIT:  # seconds / floor, and mergekit's seconds / these
                row[tool] |= {"vs_floor": row[tool]["median_wall_s"] / floor_s}
                row[tool] |= {"vs_mergekit": mk / row[tool]["median_wall_s"]}
        first = next(iter(by_tool))
        row |= {"speedup": row[first]["vs_mergekit"], "vs_floor": row[first]["vs_floor"]}
        methods[method] = {**row, "mergekit_vs_floor": mk / floor_s, **diffs[method]}
    sizes = [sum(f.stat().st_size for f in m.glob("*.safetensors")) for m in models]
    return {
        "inputs": [str(m) for m in models],
        "input_gb_each": sizes[0] / 1e9,
        "recipe_dtype": dtype,
        "threads": threads,
        "repetitions": repetitions,
        "floor": med(floor),
        "methods": methods,
    }
