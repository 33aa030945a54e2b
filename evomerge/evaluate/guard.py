"""Per-candidate guards: non-finite logits and a cooperative deadline, checked at every forward.

The check runs inside the model's forward hook, so a stuck or broken candidate stops at the
next forward pass and leaves the live model usable for the next candidate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from evomerge.errors import EvaluationError


class CandidateFailed(EvaluationError):
    """A candidate failed for a reason the search records (`reason`: nan, oom, timeout)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Deadline:
    """A per-candidate deadline: armed around each evaluation, checked by the backend's own
    loop (a forward hook, an engine step)."""

    deadline: float | None = None

    @contextmanager
    def armed(self, timeout_s: float | None) -> Iterator[None]:
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            yield
        finally:
            self.deadline = None

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    @staticmethod
    def timed_out() -> CandidateFailed:
        return CandidateFailed("timeout", "evaluation ran past evaluator.timeout_s")


class ForwardGuard(Deadline):
    """Attach once to a model's output layer; arm with a deadline for each evaluation."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.check_finite = True
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        target = head if isinstance(head, torch.nn.Module) else model
        self._handle = target.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
        if self.check_finite and logits is not None and not bool(torch.isfinite(logits).all()):
            raise CandidateFailed("nan", "the model produced non-finite logits")
        if self.past_deadline():
            raise self.timed_out()

    def remove(self) -> None:
        self._handle.remove()


def check_finite_weights(named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Raise CandidateFailed("nan") naming the first tensor holding NaN or inf."""
    for name, t in named:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CandidateFailed("nan", f"weight {name} holds NaN or inf after the merge")


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
