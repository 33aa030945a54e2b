"""Export check for a DFS run: merge its best_recipe.yaml to a plain checkpoint and compare its
logits with the in-memory path model the search scored (fp32), on toy_mgsm_ja test prompts;
also reports the literal hidden-state scaling (PathModel(fold=False)) against the export.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/dfs_export_check.py results/<run> [--prompts 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.merge import merge_to_disk
from evomerge.merge.path import PathModel, recipe_path
from evomerge.recipe import load_recipe
from evomerge.toy import task_examples


def load(ref: str) -> AutoModelForCausalLM:
    return AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--prompts", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(args.run_dir / "best_recipe.yaml")
    steps = recipe_path(recipe)
    if steps is None:
        raise SystemExit(f"{args.run_dir}: best_recipe.yaml is not a passthrough layer path")
    paths, literal = PathModel(load), PathModel(load, fold=False)
    paths.set_path(steps)
    literal.set_path(steps)
    tok = AutoTokenizer.from_pretrained(steps[0].model)
    prompts = [ex.prompt for ex in task_examples("toy_mgsm_ja")[: args.prompts]]
    with tempfile.TemporaryDirectory() as tmp:
        exported = load(str(merge_to_disk(recipe, Path(tmp) / "out")))
        diffs, literal_diffs = [], []
        with torch.no_grad():
            for text in prompts:
                ids = torch.tensor([tok(text)["input_ids"]])
                a, b = paths.model(ids).logits, exported(ids).logits
                diffs.append((a - b).abs().max().item())
                literal_diffs.append((literal.model(ids).logits - b).abs().max().item())
        layers = exported.config.num_hidden_layers
    report = {"run": args.run_dir.name, "path_layers": len(steps), "exported_layers": layers,
              "prompts": len(prompts), "max_abs_logit_diff": max(diffs),
              "literal_scaling_max_abs_logit_diff": max(literal_diffs)}  # fmt: skip
    print(json.dumps(report))


if __name__ == "__main__":
    main()
