"""Train the SmolLM2 specialists: PEFT LoRA adapters of packaged:smollm2, on CPU, seeded.

    python scripts/train_adapters.py [--which add,words] [--steps 600] [--out adapters]

`add` learns two-digit sums answered in digits ("The answer is 85."), `words` learns to answer
easy sums in English words ("The answer is eighty-five."); the target task (smol_add_words)
needs both and neither is trained on it (evomerge/real/add_words.py makes every split). Each
example is the chat-templated user prompt followed by the answer and <|im_end|>; the loss is
on the answer only. Writes <out>/smollm2-<name>/ (adapter_config.json, adapter_model.safetensors,
train.json with the settings, seconds and losses), each atomically. Needs the dev extra (peft).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from evomerge.real import ensure_packaged
from evomerge.real.add_words import splits

# LoRA on every projection of every layer, rank 8: 2.44M parameters (1.8% of the model), a
# 9.8 MB float32 adapter; alpha = 2r, PEFT's common scale.
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK, ALPHA = 8, 16
END = "<|im_end|>"  # SmolLM2's end of turn: the answer ends there, as generation does


def encode(tokenizer: Any, example: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(input ids, labels): the chat-templated prompt (label -100) then the answer."""
    messages = [{"role": "user", "content": example["prompt"]}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(example["answer"] + END, add_special_tokens=False)["input_ids"]
    return p + a, [-100] * len(p) + a


def batches(rows: list[tuple[list[int], list[int]]], size: int, pad: int, seed: int) -> Any:
    """Endless shuffled batches, left-padded (answers end every row, so the head runs only on
    the last positions): (input_ids, attention_mask, labels)."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for start in range(0, len(order) - size + 1, size):
            chunk = [rows[i] for i in order[start : start + size]]
            width = max(len(ids) for ids, _ in chunk)
            ids = [[pad] * (width - len(x)) + x for x, _ in chunk]
            labels = [[-100] * (width - len(y)) + y for _, y in chunk]
            mask = [[0] * (width - len(x)) + [1] * len(x) for x, _ in chunk]
            yield torch.tensor(ids), torch.tensor(mask), torch.tensor(labels)


def answer_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> Any:
    """Cross-entropy on the answer tokens. The 49,152-row head runs on the last K + 1
    positions only (K: the longest answer of the batch): a third of the work at full width."""
    keep = int((labels != -100).sum(-1).max()) + 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: as generation numbers them
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
    ).logits
    targets = labels[:, -keep + 1 :]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
    )


def train_one(name: str, base: Path, args: argparse.Namespace) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)  # PEFT draws lora_A from torch's global generator
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS), lora_dropout=0.0)
    model = get_peft_model(model, config)
    rows = [encode(tokenizer, e) for e in splits()[f"train_{name}"]]
    data = batches(rows, args.batch, tokenizer.pad_token_id, args.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / args.steps)
    losses, start = [], time.perf_counter()
    model.train()
    for step in range(args.steps):
        ids, mask, labels = next(data)
        loss = answer_loss(model, ids, mask, labels)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 4))
        if step % 25 == 0 or step == args.steps - 1:
            print(f"{name} step {step + 1}/{args.steps} loss {loss.item():.4f}", flush=True)
    seconds = time.perf_counter() - start
    save_adapter(model, args.out / f"smollm2-{name}")
    return {"steps": args.steps, "seconds": round(seconds, 1), "losses": losses}


def save_adapter(model: Any, out: Path) -> None:
    """The adapter, written to a temporary sibling and renamed into place."""
    if out.exists():
        raise SystemExit(f"{out} already exists; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.peft_config["default"].base_model_name_or_path = "packaged:smollm2"
        model.save_pretrained(str(tmp), safe_serialization=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--which", default="add,words", help="adapters to train, comma-separated")
    # 600 steps of 8: ~0.6 epoch of each 7,450 / 8,000-example training set.
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)  # LoRA's usual 1e-4..1e-3
    parser.add_argument("--seed", type=int, default=0)
    # Two threads: this machine's two cores. Another count changes the bytes (kernel choice).
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("adapters"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = ensure_packaged("smollm2")
    for name in args.which.split(","):
        record = {
            **train_one(name, base, args),
            "seed": args.seed,
            "threads": args.threads,
            "batch": args.batch,
            "lr": args.lr,
            "rank": RANK,
            "alpha": ALPHA,
            "targets": list(TARGETS),
            "torch": torch.__version__,
        }
        path = args.out / f"smollm2-{name}" / "train.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {path.parent} ({record['seconds']} s)")


if __name__ == "__main__":
    main()
