"""Toy-family design sweep: build a variant (base + specialists), score parents and a uniform grid.
usage: python variants.py NAME 'JSON-config' OUTDIR [cpu|cuda]   (see README.md beside this file)"""
import json, math, random, sys, time, itertools, os
from functools import partial
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

import evomerge.toy.data as D
import evomerge.toy.tokenizer as T
from evomerge.toy.probe import score
from evomerge.toy.tasks import task_examples

# --- extra skills (need extra tokens) ---
EXTRA_TOK = "S"
T.VOCAB = T.VOCAB + tuple(c for c in EXTRA_TOK if c not in T.VOCAB)
T.TOKEN_ID.clear(); T.TOKEN_ID.update({t: i for i, t in enumerate(T.VOCAB)})
import evomerge.toy.probe as P
P.VOCAB = T.VOCAB

def _succ(rng, mode):
    a = rng.randint(10, 98)
    return D._example(f"{mode}S{a}=", a + 1, mode)
def _dbl(rng, mode):
    a = rng.randint(10, 99)
    return D._example(f"{mode}D{a}=", 2 * a, mode)
def _add21_carry(rng, mode):
    while True:
        ex = D._sum21(rng, mode)
        a, b = ex.prompt[1:-1].split("+")
        if (int(a) % 10 + int(b) % 10) >= 10:
            return ex
def _add22(rng, mode):
    return D.sum_example(mode, rng.randint(10, 99), rng.randint(10, 99))
for m in D.MODES:
    D.SKILLS[f"{m}_succ"] = partial(_succ, mode=m)
    D.SKILLS[f"{m}_dbl"] = partial(_dbl, mode=m)
    D.SKILLS[f"{m}_add21c"] = partial(_add21_carry, mode=m)
    D.SKILLS[f"{m}_add22"] = partial(_add22, mode=m)

C = dict(hidden=192, layers=6, heads=6, inter=576, base_steps=1500, base_lr=2e-3, batch=128,
         warmup=50, replay=0.3, seed=0, data_seed=1,
         base_mix={"E_add11": 0.1, "E_add21": 0.06, "E_max": 1.0, "E_copy": 1.0, "E_tr": 1.0,
                   "J_tr": 1.0, "J_copy": 0.3},
         math=dict(mix={"E_add21": 1.0}, steps=400, lr=2e-4, seed=2, wd0=0.0),
         lang=dict(mix={"J_max": 1.0, "J_copy": 0.5, "J_tr": 0.3}, steps=250, lr=2e-4, seed=3, wd0=0.0),
         math2=None)
name, cfg, outdir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
dev = sys.argv[4] if len(sys.argv) > 4 else "cpu"
os.makedirs(outdir, exist_ok=True)
for k, v in cfg.items():
    if k in ("base_mix_set",):
        C["base_mix"].update(v)
    elif isinstance(v, dict) and isinstance(C.get(k), dict) and k != "base_mix":
        C[k] = {**C[k], **v}
    else:
        C[k] = v
torch.set_num_threads(1)
HELD = D.make_splits().heldout

def make_model():
    config = LlamaConfig(vocab_size=len(T.VOCAB), hidden_size=C["hidden"], intermediate_size=C["inter"],
        num_hidden_layers=C["layers"], num_attention_heads=C["heads"], num_key_value_heads=C["heads"],
        max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(C["seed"])
    return LlamaForCausalLM(config).to(dev)

def batch(exs):
    seqs = [T.encode(e.prompt + e.answer) for e in exs]
    L = max(map(len, seqs))
    x = torch.zeros((len(seqs), L), dtype=torch.long); y = torch.full((len(seqs), L), -100, dtype=torch.long)
    for i, (e, ids) in enumerate(zip(exs, seqs)):
        x[i, :len(ids)] = torch.tensor(ids); s = len(e.prompt)
        y[i, s - 1:len(ids) - 1] = torch.tensor(ids[s:])
    return x.to(dev), y.to(dev)

def with_replay(mix, replay, drop=()):
    bm = {k: v for k, v in C["base_mix"].items() if k not in drop}
    tot, btot = sum(mix.values()), sum(bm.values())
    out = {k: v / tot * (1 - replay) for k, v in mix.items()}
    for k, v in bm.items():
        out[k] = out.get(k, 0.0) + v / btot * replay
    return out

def train(model, mix, steps, lr, seed, wd0=0.0, ref=None):
    rng = random.Random(seed)
    stream = D.sample_mix(rng, mix, HELD)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    params = dict(model.named_parameters())
    model.train()
    for step in range(steps):
        warm = min(1.0, (step + 1) / C["warmup"])
        cur = lr * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups: g["lr"] = cur
        x, y = batch([next(stream) for _ in range(C["batch"])])
        loss = F.cross_entropy(model(input_ids=x, use_cache=False).logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
        if wd0 and ref is not None:
            with torch.no_grad():
                for k, p in params.items():
                    p.sub_(cur * wd0 * (p - ref[k]))
    model.eval()

TASKS = ["toy_mgsm_ja", "toy_math_en", "toy_lang_ja"]
EXS = {t: task_examples(t) for t in TASKS}
def carry_split(model):
    from evomerge.toy.probe import generate, score_response
    exs = EXS["toy_mgsm_ja"]; resp = generate(model, [e.prompt for e in exs])
    c = [0, 0]; n = [0, 0]
    for r, e in zip(resp, exs):
        a, b = e.prompt[1:-1].split("+"); k = int((int(a) % 10 + int(b) % 10) >= 10)
        n[k] += 1; c[k] += score_response(r, e.value, e.script)["acc"]
    return c[0] / n[0], c[1] / n[1]
def evaluate(model, tasks=TASKS):
    return {t: round(100 * score(model, EXS[t]).acc, 1) for t in tasks}

t0 = time.time()
model = make_model()
if C.get("base_from"):
    if os.path.isdir(C["base_from"]):
        from safetensors.torch import load_file
        model.load_state_dict(load_file(os.path.join(C["base_from"], "model.safetensors")))
    else:
        model.load_state_dict(torch.load(C["base_from"]))
else:
    train(model, C["base_mix"], C["base_steps"], C["base_lr"], C["data_seed"])
    torch.save(model.state_dict(), os.path.join(outdir, f"{name}_base.pt"))
base = {k: v.detach().clone() for k, v in model.state_dict().items()}
BASE_ROW = evaluate(model)
SPEC_CACHE = {}
def run_variant(name, C):
    rows = {"base": BASE_ROW}
    specs = [("math_en", C["math"]), ("lang_ja", C["lang"])] + ([("math2", C["math2"])] if C["math2"] else [])
    deltas = {}
    for sname, s in specs:
        key = json.dumps([sname, s, C["replay"]], sort_keys=True)
        if key not in SPEC_CACHE:
            model.load_state_dict(base)
            train(model, with_replay(s["mix"], C["replay"], s.get("drop", ())), s["steps"], s["lr"], s["seed"], s.get("wd0", 0.0), base)
            sd = model.state_dict()
            SPEC_CACHE[key] = ({k: sd[k].detach() - base[k] for k in base}, evaluate(model))
        deltas[sname], rows[sname] = SPEC_CACHE[key]
    train_s = time.time() - t0
    norms = {n: round(float(sum((d.float() ** 2).sum() for d in dd.values()) ** 0.5), 3) for n, dd in deltas.items()}
    print(name, "train", round(train_s), "s", rows, norms, flush=True)
    
    def ties_mask(ds, ws):
        tot = sum(w * d for w, d in zip(ws, ds))
        sign = torch.sign(tot)
        return [torch.sign(d) == sign for d in ds]
    def trim(d, density):
        k = int(d.numel() * density)
        if k >= d.numel(): return d
        if k == 0: return torch.zeros_like(d)
        thr = d.abs().flatten().kthvalue(d.numel() - k).values
        return d * (d.abs() > thr)
    gen = torch.Generator(device=dev)
    def dare(d, density):
        gen.manual_seed(hash(d.shape) % 1000)
        m = torch.bernoulli(torch.full_like(d, density), generator=gen)
        return d * m / density
    
    math_names = [n for n, _ in specs if n.startswith("math")]
    def merged(method, wm, wl, density=None):
        out = {}
        for k in base:
            ds = [deltas[n][k] for n in math_names] + [deltas["lang_ja"][k]]
            ws = [wm] * len(math_names) + [wl]
            if method == "ta":
                out[k] = base[k] + sum(w * d for w, d in zip(ws, ds))
            else:
                ds = [trim(d, density) if method == "ties" else dare(d, density) for d in ds]
                masks = ties_mask(ds, ws)
                out[k] = base[k] + sum(w * d * m for w, d, m in zip(ws, ds, masks))
        return out
    grid = {}
    W = (0.5, 0.75, 1.0, 1.25, 1.5)
    for wm, wl in itertools.product(W, W):
        grid[f"ta {wm}/{wl}"] = ("ta", wm, wl, None)
    for meth, d, w in itertools.product(("ties", "dare"), (0.3, 0.5, 0.8), (1.0, 1.25)):
        grid[f"{meth} d{d} w{w}"] = (meth, w, w, d)
    res = {}
    for gname, args in grid.items():
        model.load_state_dict(merged(*args))
        res[gname] = evaluate(model, ["toy_mgsm_ja"])["toy_mgsm_ja"]
    best = max(res, key=res.get)
    model.load_state_dict(merged(*grid[best]))
    best_full = evaluate(model); cs = carry_split(model)
    bp = max(rows[n]["toy_mgsm_ja"] for n, _ in specs)
    gap = round(res[best] - bp, 1)
    ok = (all(rows[n]["toy_mgsm_ja"] <= 20 for n, _ in specs) and rows["math_en"]["toy_math_en"] >= 80
          and rows["lang_ja"]["toy_lang_ja"] >= 80 and gap >= 20 and res[best] < 80)
    summary = dict(name=name, cfg=cfg, train_s=round(train_s), total_s=round(time.time() - t0), rows=rows,
                   norms=norms, best=best, best_score=res[best], best_full=best_full, best_carry=cs,
                   gap=gap, ok=ok, grid=res)
    print(f"RESULT {name}: ok={ok} gap={gap} best={best} {res[best]} parents="
          + " ".join(f"{n}:{rows[n]['toy_mgsm_ja']}/{rows[n]['toy_math_en']}/{rows[n]['toy_lang_ja']}" for n in rows)
          + f" carry(nc,c)={cs[0]:.2f},{cs[1]:.2f} norms={norms} t={round(time.time()-t0)}s", flush=True)
    os.makedirs(outdir, exist_ok=True)
    json.dump(summary, open(os.path.join(outdir, f"{name}.json"), "w"), indent=1)
    
import copy
run_variant(name, C)
for vname, over in C.get("variants", {}).items():
    C2 = copy.deepcopy(C)
    for k, v in over.items():
        C2[k] = {**C2[k], **v} if isinstance(v, dict) and isinstance(C2.get(k), dict) else v
    run_variant(f"{name}+{vname}", C2)
