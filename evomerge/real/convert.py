"""Convert a GGUF file into a Hugging Face checkpoint directory, written atomically.

transformers dequantizes a GGUF on load (`from_pretrained(folder, gguf_file=...)`, with the
`gguf` package), but its `save_pretrained` refuses a model marked as GGUF-quantized; so the
state dict is written here with safetensors, beside a config without the quantization mark,
the generation config, the tokenizer (with its chat template) and a manifest. Everything goes
to a temporary sibling first and is renamed into place: a crash leaves no half-written model.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from evomerge.errors import ConfigError

WEIGHTS = "model.safetensors"
TIED_HEAD = "lm_head.weight"


def convert_gguf(source: Path, out: Path, *, dtype: str, extra_files: dict[str, str]) -> Path:
    """Dequantize `source` (a GGUF file) into the checkpoint directory `out`, in `dtype`.

    `extra_files` (name -> text, e.g. a manifest with the source's SHA-256) are written beside
    the checkpoint. If another process finished the same conversion first, its directory is
    kept and returned.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ConfigError(f"{source}: unknown dtype {dtype!r} for the converted checkpoint")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        folder, name = str(source.parent), source.name
        try:
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32
            )
        except (OSError, ValueError, KeyError) as e:
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"{source}: cannot read as a GGUF model: {first_line}") from None
        _write_weights(model, tmp / WEIGHTS, torch_dtype)
        _write_config(model, tmp, dtype)
        AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
        for file, text in extra_files.items():
            (tmp / file).write_text(text)
        try:
            tmp.rename(out)
        except OSError:
            if not out.is_dir():
                raise
            shutil.rmtree(tmp)  # another process converted it first: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_weights(model: torch.nn.Module, path: Path, dtype: torch.dtype) -> None:
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop(TIED_HEAD, None)  # the same tensor as embed_tokens: stored once, as on the Hub
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def _write_config(model: Any, out: Path, dtype: str) -> None:
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    config["dtype"] = dtype
    config["architectures"] = [type(model).__name__]
    type(model.config).from_dict(config).save_pretrained(out)
    model.generation_config.save_pretrained(out)
