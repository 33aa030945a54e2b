"""Typed evaluation settings (built once from the Hydra config at the entry point)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evomerge.errors import ConfigError

BACKENDS = ("hf", "vllm")
# vllm.LLM arguments the backend sets itself: engine_args may not repeat them
ENGINE_ARGS_OWN_KEYS = {
    "model": "the engine serves the model being evaluated",
    "pretrained": "the engine serves the model being evaluated",
    "dtype": "use evaluator.dtype",
    "gpu_memory_utilization": "use evaluator.gpu_memory_utilization",
    "tensor_parallel_size": "use evaluator.tensor_parallel_size",
    "max_model_len": "use evaluator.max_length",
    "max_length": "use evaluator.max_length",
    "trust_remote_code": "use evaluator.trust_remote_code",
    "batch_size": "vLLM batches by itself",
}
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EvalSettings:
    """Knobs of one evaluator, the ones mergekit-evolve users asked for.

    backend: "hf" (transformers model in this process, CPU or GPU) or "vllm" (GPU).
    batch_size: generation batch size; the toy tasks' prompts are ~8 tokens, so 64 keeps a
        CPU busy without padding waste.
    limit: score only the first N documents of each task (None: all).
    num_fewshot: override the tasks' few-shot count (None: the task's own).
    gen_kwargs: overrides of the tasks' generation_kwargs (e.g. max_gen_toks).
    timeout_s: a candidate whose evaluation runs longer fails with reason "timeout".
    """

    backend: str = "hf"
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = 64
    limit: int | None = None
    num_fewshot: int | None = None
    apply_chat_template: bool = False
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    max_length: int | None = None
    trust_remote_code: bool = False
    # read pickle (.bin) checkpoints too (`eval --allow-pickle`): they can run code when loaded
    allow_pickle: bool = False
    # vLLM engine knobs (ignored by the HF backend)
    gpu_memory_utilization: float = 0.8
    tensor_parallel_size: int = 1
    # further vllm.LLM arguments, passed as given (e.g. enforce_eager, max_num_seqs,
    # kv_cache_memory_bytes); the ones above have their own keys
    engine_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in self.engine_args:
            if key in ENGINE_ARGS_OWN_KEYS:
                raise ConfigError(
                    f"evaluator.engine_args.{key}: not an engine argument to set here "
                    f"({ENGINE_ARGS_OWN_KEYS[key]})"
                )
        if self.backend not in BACKENDS:
            raise ConfigError(f"evaluator.backend: must be one of {BACKENDS}, got {self.backend!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"evaluator.dtype: must be one of {DTYPES}, got {self.dtype!r}")
        if self.batch_size < 1:
            raise ConfigError(f"evaluator.batch_size: must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"evaluator.limit: must be >= 1 or null, got {self.limit}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"evaluator.num_fewshot: must be >= 0, got {self.num_fewshot}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"evaluator.timeout_s: must be > 0 or null, got {self.timeout_s}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(
                "evaluator.gpu_memory_utilization: must be in (0, 1], "
                f"got {self.gpu_memory_utilization}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"evaluator: unknown key(s) {unknown}; valid keys are {sorted(known)}"
            )
        d = dict(d)
        d["gen_kwargs"] = dict(d.get("gen_kwargs") or {})
        d["engine_args"] = dict(d.get("engine_args") or {})
        return cls(**d)
