"""Does merging matter on the toy family? Parents and a coarse grid of uniform merges, scored
by lm-eval on the toy tasks (test splits); prints a table and writes JSON.

    TQDM_DISABLE=1 python scripts/toy_grid.py [--size full|small] [--threads N] [--out FILE]

(TQDM_DISABLE=1 silences lm-eval's progress bars, several per merge.)

Uniform merges: every math specialist gets the same weight, the language specialist its own;
task arithmetic over a weight grid, TIES and DARE-TIES (weights summed, not normalized, as
task arithmetic) at a few densities and weights, and a plain average. The phenomenon the toy
must show (issue 4): each parent <= 20% on toy_mgsm_ja while >= 80% on its own probe, and the
best uniform merge >= 20 points above the best parent but below 80%.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.merge import SourceCache, merge_into_model
from evomerge.recipe import parse_recipe
from evomerge.toy import ToyFamily, ensure_family

REPO = Path(__file__).resolve().parents[1]
TARGET = "toy_mgsm_ja"
TA_WEIGHTS = (0.5, 0.75, 1.0, 1.25, 1.5)
DENSITIES = (0.3, 0.5, 0.8)
SPARSE_WEIGHTS = (1.0, 1.25)


def grid(family: ToyFamily) -> dict[str, dict[str, Any]]:
    """Name -> mergekit-style recipe mapping, for every uniform merge of the grid."""
    math = [n for n in family.specialists if n.startswith("math")]
    lang = [n for n in family.specialists if n.startswith("lang")]

    def models(w_math: float, w_lang: float, **extra: float) -> list[dict[str, Any]]:
        weights = {**dict.fromkeys(math, w_math), **dict.fromkeys(lang, w_lang)}
        return [
            {"model": str(family.path(n)), "parameters": {"weight": w, **extra}}
            for n, w in weights.items()
        ]

    base = str(family.base)
    out: dict[str, dict[str, Any]] = {
        "linear (average)": {
            "merge_method": "linear",
            "models": models(1.0, 1.0),
        }
    }
    for wm, wl in itertools.product(TA_WEIGHTS, TA_WEIGHTS):
        out[f"task_arithmetic {wm}/{wl}"] = {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": models(wm, wl),
        }
    for method, d, w in itertools.product(("ties", "dare_ties"), DENSITIES, SPARSE_WEIGHTS):
        out[f"{method} d{d} w{w}"] = {
            "merge_method": method,
            "base_model": base,
            "parameters": {"normalize": False},
            "models": models(w, w, density=d),
        }
    return out


def evaluate(
    model: torch.nn.Module, tok: Any, tasks: list[str], tm: TaskManager
) -> dict[str, float]:
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=128, device="cpu")
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, verbosity="ERROR")
    assert out is not None  # rank 0 always gets results
    return {t: out["results"][t]["acc,none"] for t in tasks}


def verdict(rows: dict[str, dict[str, Any]], family: ToyFamily) -> list[str]:
    """The issue's conditions, each with its numbers."""
    parents = {n: rows[n]["scores"] for n in family.specialists}
    probes = {n: family.manifest["models"][n]["probe"] for n in family.specialists}
    best_parent = max(s[TARGET] for s in parents.values())
    merges = {k: v for k, v in rows.items() if v["kind"] == "merge"}
    best = max(merges, key=lambda k: merges[k]["scores"][TARGET])
    best_score = merges[best]["scores"][TARGET]
    lines = [
        f"{n}: {TARGET} {100 * s[TARGET]:.1f} (<= 20: {s[TARGET] <= 0.2}), "
        f"{probes[n]} {100 * s[probes[n]]:.1f} (>= 80: {s[probes[n]] >= 0.8})"
        for n, s in parents.items()
    ]
    gain = best_score - best_parent
    lines.append(
        f"best uniform merge: {best}: {100 * best_score:.1f}, {100 * gain:+.1f} over the best "
        f"parent (>= +20: {gain >= 0.2}; below 80: {best_score < 0.8})"
    )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="full", choices=["full", "small"])
    p.add_argument("--cache-dir", type=Path, help="toy family cache (default: $EVOMERGE_CACHE)")
    p.add_argument("--threads", type=int, help="torch threads (default: every core)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "toy-grid" / "grid.json")
    args = p.parse_args()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)

    family = ensure_family(args.size, cache_dir=args.cache_dir, threads=args.threads)
    probes = [family.manifest["models"][n]["probe"] for n in family.specialists]
    tasks = list(dict.fromkeys([TARGET, *probes]))
    tm = TaskManager(include_path=str(REPO / "tasks"), include_defaults=False)
    tok = AutoTokenizer.from_pretrained(family.base)
    rows: dict[str, dict[str, Any]] = {}
    for name in family.names:
        model = AutoModelForCausalLM.from_pretrained(family.path(name)).eval()
        rows[name] = {"kind": "parent", "scores": evaluate(model, tok, tasks, tm)}
        print(
            f"{name:32s} "
            + "  ".join(f"{t} {100 * v:5.1f}" for t, v in rows[name]["scores"].items()),
            flush=True,
        )

    live = AutoModelForCausalLM.from_pretrained(family.base).eval()
    cache = SourceCache(preload=True)
    for name, recipe in grid(family).items():
        start = time.perf_counter()
        merge_into_model(parse_recipe(recipe), live, cache=cache)
        scores = evaluate(live, tok, tasks, tm)
        rows[name] = {
            "kind": "merge",
            "recipe": recipe,
            "scores": scores,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(
            f"{name:32s} " + "  ".join(f"{t} {100 * v:5.1f}" for t, v in scores.items()), flush=True
        )

    summary = verdict(rows, family)
    print("\n".join(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "family": str(family.root),
        "manifest": family.manifest,
        "tasks": tasks,
        "rows": rows,
        "verdict": summary,
    }
    args.out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
