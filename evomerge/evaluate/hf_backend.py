"""The Hugging Face backend: lm-eval's HFLM over one live transformers model (CPU or GPU);
the merge core writes each candidate's tensors straight into its parameters (no reload, no
re-instantiation)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import EvaluationError, preview
from evomerge.evaluate.guard import ForwardGuard, check_finite_weights
from evomerge.evaluate.settings import EvalSettings
from evomerge.merge.confine import INDEX_FILES, ModelRoot

DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_hf_model(path: str | Path, settings: EvalSettings) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(path)
    if not (Path(path).is_dir() or settings.trust_remote_code or "/" in path):
        raise EvaluationError(f"model: {preview(path)} is neither a directory nor a Hub model id")
    if Path(path).is_dir():  # transformers reads what it finds there: check it all first
        ModelRoot.of(path).check_files(INDEX_FILES)
    dtype: Any = "auto" if settings.dtype == "auto" else DTYPE[settings.dtype]
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype,
            trust_remote_code=settings.trust_remote_code,
            use_safetensors=None if settings.allow_pickle else True,
        )
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=settings.trust_remote_code)
    except OSError as e:
        raise EvaluationError(f"model: cannot load {preview(path)}: {e}") from e
    model.to(settings.device).eval()
    return model, tok


class HFBackend:
    """lm-eval's HFLM over one live transformers model."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, settings: EvalSettings) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self._lm: Any = None
        self._guard: ForwardGuard | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, settings: EvalSettings) -> HFBackend:
        model, tok = load_hf_model(path, settings)
        return cls(model, tok, settings)

    @property
    def lm(self) -> Any:
        if self._lm is None:
            from lm_eval.models.huggingface import HFLM

            if self.tokenizer.pad_token is None:  # left-padded batches need a pad token
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self._lm = HFLM(
                pretrained=self.model,
                tokenizer=self.tokenizer,
                batch_size=self.settings.batch_size,
                max_length=self.settings.max_length,
            )
        return self._lm

    @property
    def target(self) -> torch.nn.Module:
        return self.model

    def guard(self) -> ForwardGuard:
        if self._guard is None:
            self._guard = ForwardGuard(self.model)
        return self._guard

    def commit_weights(self, finite: Collection[str] = ()) -> None:
        unchecked = ((n, t) for n, t in self.model.state_dict().items() if n not in finite)
        check_finite_weights(unchecked)

    def load_model(self, path: str) -> torch.nn.Module:
        return load_hf_model(path, self.settings)[0]

    def set_model(self, model: torch.nn.Module) -> None:
        """Evaluate a different module from now on (e.g. a data-flow path model)."""
        if self._guard is not None:
            self._guard.remove()
            self._guard = None
        self.model = model
        self._lm = None  # HFLM wraps one module; a new wrapper costs no weight copies
