"""Research: on the pinned v4 base, a stronger math fine-tune; parents and a task-arithmetic grid.
usage: python exp_math.py FAMILY OUT STEPS_SCALE LR_SCALE   (FAMILY: a pinned v4 build, e.g.
`python -m evomerge toy --out FAMILY`; run with the kernel pins in the environment)"""
import json, sys, shutil, itertools, time
from dataclasses import replace
from pathlib import Path
import torch
from transformers import LlamaForCausalLM
from evomerge.toy.family import SIZES, SPECIALISTS, train, with_replay
from evomerge.toy.probe import score
from evomerge.toy.tasks import task_examples
from evomerge.toy.tokenizer import make_tokenizer
from evomerge.merge import merge_into_model, SourceCache
from evomerge.recipe import parse_recipe

src, out = Path(sys.argv[1]), Path(sys.argv[2])
ss, ls = float(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(2)
cfg = SIZES["full"]
spec = replace(SPECIALISTS[0], steps_scale=ss, lr_scale=ls)
t = time.time()
if not (out / "math_en" / "model.safetensors").exists():
    model = LlamaForCausalLM.from_pretrained(src / "base")
    train(model, with_replay(spec.mix, cfg.replay), steps=cfg.steps(spec), lr=cfg.lr(spec), cfg=cfg, seed=spec.seed)
    model.save_pretrained(out / "math_en"); make_tokenizer().save_pretrained(out / "math_en")
print("trained", cfg.steps(spec), cfg.lr(spec), round(time.time() - t), flush=True)
tasks = ["toy_mgsm_ja", "toy_math_en", "toy_lang_ja"]
ex = {k: task_examples(k) for k in tasks}
def sc(m): return {k: round(100 * score(m, ex[k]).acc, 1) for k in tasks}
m = LlamaForCausalLM.from_pretrained(out / "math_en").eval()
rows = {"math_en": sc(m)}
print("math_en", rows["math_en"], flush=True)
live = LlamaForCausalLM.from_pretrained(src / "base").eval()
cache = SourceCache(preload=True)
for wm, wl in itertools.product((0.75, 1.0, 1.25, 1.5), (1.0, 1.25, 1.5)):
    r = {"merge_method": "task_arithmetic", "base_model": str(src / "base"),
         "models": [{"model": str(out / "math_en"), "parameters": {"weight": wm}},
                    {"model": str(src / "lang_ja"), "parameters": {"weight": wl}}]}
    merge_into_model(parse_recipe(r), live, cache=cache)
    rows[f"TA {wm}/{wl}"] = sc(live)
    print(f"TA {wm}/{wl}", rows[f"TA {wm}/{wl}"], flush=True)
(out / "rows.json").write_text(json.dumps(rows, indent=1))
