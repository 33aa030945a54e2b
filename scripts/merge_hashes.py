"""Hash every merge method's output on the mergekit oracle recipes (identity check for refactors).

    PYTHONPATH=TREE python scripts/merge_hashes.py OUT.json

Merges each recipe of tests/merge/test_mergekit_oracle.py (plus the seeded methods below
density 1, and entry-wise methods on tensors large enough to be merged in blocks) on the same
tiny checkpoints as the test, and writes {case: sha256 of the merged tensors' names, dtypes,
shapes and bytes}; prints the sha256 of that file. Two runs agree iff every output is
bit-identical.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

import evomerge
from evomerge.merge import merge_to_disk
from evomerge.recipe import load_recipe

try:  # the tiny checkpoints the tests use (moved out of the shipped package)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # evomerge_dev: not installed
    from evomerge_dev.testing import make_tiny_llama
except ImportError:  # trees from before the move out of the shipped package
    from evomerge.testing import make_tiny_llama  # type: ignore[no-redef]


def oracle_cases() -> dict[str, str]:
    root = Path(evomerge.__file__).resolve().parents[1]  # the tree under test (PYTHONPATH)
    path = root / "tests" / "merge" / "test_mergekit_oracle.py"
    spec = importlib.util.spec_from_file_location("oracle_cases", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cases = dict(module.CASES)
    for method in ("dare_ties", "dare_linear", "della", "della_linear"):
        epsilon = ", epsilon: 0.2" if method.startswith("della") else ""
        cases[f"{method}_density_0.3"] = (
            f"merge_method: {method}\nbase_model: $base\nrandom_seed: 1\n"
            f"models: [{{model: $a, parameters: {{weight: 1.0, density: 0.3{epsilon}}}}},"
            f" {{model: $b, parameters: {{weight: 0.7, density: 0.6{epsilon}}}}}]\n"
        )
    for method in ("linear", "task_arithmetic", "ties"):  # > 2**20 entries: block-wise path
        base = "base_model: $wbase\n" if method != "linear" else ""
        density = ", density: 0.5" if method == "ties" else ""
        cases[f"wide_{method}"] = (
            f"merge_method: {method}\n{base}dtype: bfloat16\n"
            f"models: [{{model: $wa, parameters: {{weight: 0.6{density}}}}},"
            f" {{model: $wb, parameters: {{weight: 0.5{density}}}}}]\n"
        )
    return cases


def make_models(root: Path) -> dict[str, Path]:
    base = make_tiny_llama(root / "base", seed=0, num_layers=3)
    qbase = make_tiny_llama(root / "qbase", seed=10, model_type="qwen2")
    gbase = make_tiny_llama(root / "gbase", seed=11, model_type="gemma")
    wbase = make_tiny_llama(root / "wbase", seed=20, num_layers=1, hidden_size=64, vocab_size=20000)
    return {
        "base": base,
        "a": make_tiny_llama(root / "a", seed=1, base=base),
        "b": make_tiny_llama(root / "b", seed=2, base=base, shards=3),
        "c": make_tiny_llama(root / "c", seed=3, base=base),
        "qbase": qbase,
        "qa": make_tiny_llama(root / "qa", seed=12, base=qbase),
        "gbase": gbase,
        "ga": make_tiny_llama(root / "ga", seed=13, base=gbase),
        "wbase": wbase,
        "wa": make_tiny_llama(root / "wa", seed=21, base=wbase),
        "wb": make_tiny_llama(root / "wb", seed=22, base=wbase),
    }


def tensors_sha256(directory: Path) -> str:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def main(out: str) -> None:
    hashes = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = make_models(Path(tmp) / "models")
        for case, template in sorted(oracle_cases().items()):
            text = template
            for key in sorted(models, key=len, reverse=True):
                text = text.replace(f"${key}", str(models[key]))
            merged = merge_to_disk(load_recipe(text), Path(tmp) / "out" / case)
            hashes[case] = tensors_sha256(merged)
    body = json.dumps(hashes, indent=1, sort_keys=True) + "\n"
    Path(out).write_text(body)
    print(f"{len(hashes)} cases, sha256 {hashlib.sha256(body.encode()).hexdigest()}")
    # the tree is PYTHONPATH's (else the installed evomerge): say which one was hashed
    print(f"tree: {Path(evomerge.__file__).resolve().parents[1]}")


if __name__ == "__main__":
    main(sys.argv[1])
