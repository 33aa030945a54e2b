"""Evaluation backends: one live model per process whose weights are replaced per candidate.

`Backend` is what the evaluator and the search's scorer use; the engines are in their own
modules: hf_backend (transformers, CPU or GPU) and vllm_backend (a vLLM engine).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

import torch

from evomerge.evaluate.guard import Deadline
from evomerge.evaluate.hf_backend import HFBackend
from evomerge.evaluate.settings import EvalSettings
from evomerge.evaluate.vllm_backend import VLLMBackend


class Backend(Protocol):
    settings: EvalSettings

    @property
    def lm(self) -> Any: ...  # an lm_eval.api.model.LM

    @property
    def target(self) -> torch.nn.Module:
        """The torch model the merge core writes candidates into."""
        ...

    def commit_weights(self, finite: Collection[str] = ()) -> None:
        """Check the target's new weights and make them the ones the engine evaluates.

        `finite` names tensors already known to be finite (the merge checked them).
        """
        ...

    def guard(self) -> Deadline | None: ...

    def load_model(self, path: str) -> torch.nn.Module:
        """A source model loaded the way this backend loads its own (data-flow paths)."""
        ...

    def set_model(self, model: torch.nn.Module) -> None:
        """Evaluate a different module from now on (a data-flow path model); the backend's
        own model comes back with another set_model."""
        ...


def make_backend(
    model_path: str | Path, settings: EvalSettings, *, host_device: str = "cpu"
) -> Backend:
    """The evaluator's backend over `model_path`; `host_device` is where vLLM's shadow model
    lives (the HF backend's model lives on `settings.device`)."""
    if settings.backend == "vllm":
        return VLLMBackend(model_path, settings, host_device)
    return HFBackend.from_pretrained(model_path, settings)
