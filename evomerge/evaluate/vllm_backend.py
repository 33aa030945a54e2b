"""The vLLM backend: one engine for the whole search; each candidate is merged into a shadow
model (a transformers copy, on the CPU unless told otherwise) and its tensors are pushed into
the engine by vLLM's own in-place reload. Everything that adapts to the engine's version and
internals lives in this module.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import EvaluationError, MergeError
from evomerge.evaluate.guard import CandidateFailed, Deadline, check_finite_weights
from evomerge.evaluate.hf_backend import load_hf_model
from evomerge.evaluate.settings import EvalSettings
from evomerge.merge.architecture import is_head

log = logging.getLogger(__name__)
DATA_FLOW_NEEDS_HF = (
    "data-flow candidates run as a layer path over the source models, which needs "
    "evaluator.backend=hf"
)


class VLLMBackend:
    """One vLLM engine; candidates are merged into a shadow model and pushed in place.

    The shadow (a transformers copy of the model, the merge's target) lives on `host_device`:
    the CPU by default, or the GPU when it has room beside the engine (the push is then a
    copy within the GPU).
    """

    def __init__(self, path: str | Path, settings: EvalSettings, host_device: str = "cpu") -> None:
        self.path = str(path)
        self.settings = settings
        self.host_device = host_device
        self._lm: Any = None
        self._shadow: torch.nn.Module | None = None

    @property
    def lm(self) -> Any:
        if self._lm is None:
            # The engine must run in this process so that pushed tensors need no serialization.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            try:
                from lm_eval.models.vllm_causallms import VLLM
            except ImportError as e:
                # Name the module that failed: an installed vLLM can miss one of its own deps.
                raise EvaluationError(
                    f"evaluator=vllm could not import vLLM through lm-eval ({e}); "
                    "install it with pip install -e '.[vllm]' on a CUDA machine"
                ) from e
            self._lm = VLLM(
                pretrained=self.path,
                dtype=self.settings.dtype,
                batch_size="auto",
                gpu_memory_utilization=self.settings.gpu_memory_utilization,
                tensor_parallel_size=self.settings.tensor_parallel_size,
                max_model_len=self.settings.max_length,
                trust_remote_code=self.settings.trust_remote_code,
                **self.settings.engine_args,
            )
            self._lm.model = QuietLLM(self._lm.model, watch_logits=watch_logits(self._lm.model))
        return self._lm

    @property
    def target(self) -> torch.nn.Module:
        if self._shadow is None:
            shadow_settings = EvalSettings(
                backend="hf",
                device=self.host_device,
                dtype=self.settings.dtype,
                trust_remote_code=self.settings.trust_remote_code,
            )
            self._shadow, _ = load_hf_model(self.path, shadow_settings)
        return self._shadow

    def guard(self) -> QuietLLM:
        # The deadline is checked between engine steps, the logits once the candidate's
        # requests are done; NaN and inf weights are caught before the push.
        engine: QuietLLM = self.lm.model
        return engine

    def load_model(self, path: str) -> torch.nn.Module:
        return load_hf_model(path, self.settings)[0]

    def set_model(self, model: torch.nn.Module) -> None:
        # a candidate that cannot run here (the search fails it and goes on)
        raise MergeError(DATA_FLOW_NEEDS_HF)

    def commit_weights(self, finite: Collection[str] = ()) -> None:
        shadow = self.target
        tied = bool(getattr(shadow.config, "tie_word_embeddings", False))
        named = [
            (name, t) for name, t in shadow.state_dict().items() if not (tied and is_head(name))
        ]
        check_finite_weights((n, t) for n, t in named if n not in finite)
        push_weights(self.lm.model, named)


class QuietLLM(Deadline):
    """A vllm.LLM whose `generate` draws no progress bar of its own, keeps a deadline and fails
    a candidate whose logits are not finite.

    lm-eval asks for vLLM's bar whenever batch_size is "auto"; one bar per candidate floods
    the search's output, and with tqdm disabled (TQDM_DISABLE=1, as the search sets) vLLM
    0.26 divides its token count by the disabled bar's zero elapsed time and raises
    ZeroDivisionError.

    Armed with a timeout (the backend's guard), `generate` checks the deadline before each
    engine step (one token for every running request); past it, the unfinished requests are
    aborted, so the engine is idle and ready for the next candidate, and the candidate fails
    with reason "timeout". With `watch_logits` (the engine's logits layers hooked by
    `watch_logits()`), the logits of every step are checked on the device, and once the
    requests are done a candidate that produced a NaN or inf logit fails with reason "nan".
    Everything else is the engine's own.
    """

    def __init__(self, llm: Any, watch_logits: bool = False) -> None:
        self._llm = llm
        self.watch_logits = watch_logits

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["use_tqdm"] = False
        engine = self._llm.llm_engine
        if self.deadline is None:
            return self._generate(engine, args, kwargs)
        own_step = engine.step

        def step() -> Any:
            if self.past_deadline():
                abort_unfinished(engine, own_step)
                raise self.timed_out()
            return own_step()

        patched_before = "step" in vars(engine)
        engine.step = step
        try:
            return self._generate(engine, args, kwargs)
        finally:
            if patched_before:
                engine.step = own_step
            else:
                del engine.step

    def _generate(self, engine: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        try:
            outputs = self._llm.generate(*args, **kwargs)
        except BaseException:
            # e.g. out of memory mid-step: the failed candidate's requests must not stay
            # queued into the next candidate's generate, nor its non-finite flags count
            # against it (reading them must not hide its own error)
            abort_unfinished(engine, step=None)
            if self.watch_logits:
                with contextlib.suppress(Exception):
                    self._llm.collective_rpc(take_nonfinite)
            raise
        if self.watch_logits and any(self._llm.collective_rpc(take_nonfinite)):
            raise CandidateFailed("nan", "the model produced non-finite logits")
        return outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)


class NonFiniteFlag:
    """A forward hook on a vLLM logits layer: ORs "some logit is NaN or inf" into a flag on
    the logits' own device, so checking a step costs no host sync; `take()` reads and
    clears it."""

    def __init__(self) -> None:
        self.flag: torch.Tensor | None = None

    def __call__(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):  # TP ranks > 0 get no logits
            return
        nonfinite = ~torch.isfinite(output).all()
        # out of place: the flag may be an inference tensor, the next step may not run in
        # inference mode
        self.flag = nonfinite if self.flag is None else self.flag | nonfinite

    def take(self) -> bool:
        flag, self.flag = self.flag, None
        return flag is not None and bool(flag)


WATCH_ATTR = "evomerge_nonfinite_flags"


def _worker_model(worker: Any) -> Any:
    runner = worker.model_runner
    return runner.get_model() if hasattr(runner, "get_model") else runner.model


def hook_logits_layers(worker: Any) -> int:
    """On a vLLM worker: hook every logits layer of its model (vLLM's LogitsProcessor, which
    every step's and every prompt-logprob's logits come out of, outside compiled graphs) with
    a NonFiniteFlag. Returns how many layers are watched (none on a release that moved it)."""
    try:
        from vllm.model_executor.layers.logits_processor import LogitsProcessor
    except ImportError:
        return 0
    model = _worker_model(worker)
    flags = getattr(model, WATCH_ATTR, None)
    if flags is None:
        flags = []
        for module in model.modules():
            if isinstance(module, LogitsProcessor):
                flag = NonFiniteFlag()
                module.register_forward_hook(flag)
                flags.append(flag)
        setattr(model, WATCH_ATTR, flags)
    return len(flags)


def take_nonfinite(worker: Any) -> bool:
    """On a vLLM worker: whether its model produced a non-finite logit since the last call."""
    flags = getattr(_worker_model(worker), WATCH_ATTR, [])
    return any([flag.take() for flag in flags])  # a list: every flag is cleared


def watch_logits(llm: Any) -> bool:
    """Hook a live engine's logits layers for the non-finite check; False (with a warning)
    where its model has none vLLM's way, whose logits then go unchecked."""
    hooked = llm.collective_rpc(hook_logits_layers)
    if hooked and all(hooked):
        return True
    log.warning(
        "vLLM's model has no LogitsProcessor layer to watch: non-finite logits will not fail "
        "a candidate (NaN and inf weights still do)"
    )
    return False


def abort_unfinished(engine: Any, step: Any) -> None:
    """Leave a vLLM engine with no request in flight: abort them by id (the ids its output
    processor tracks), or, on a release without that record, run them to the end with
    `step` (when given)."""
    states = getattr(getattr(engine, "output_processor", None), "request_states", None)
    if isinstance(states, dict) and states:
        engine.abort_request(list(states))
    while step is not None and engine.has_unfinished_requests():
        step()


def engine_config(worker: Any) -> contextlib.AbstractContextManager[Any]:
    """vLLM's current-config context for code run on a worker outside its own calls.

    Layers may read the engine's config while they process weights; vLLM 0.30's worker sets it
    around its reload, 0.26's does not. Nothing to set for workers that carry no config.
    """
    config = getattr(worker, "vllm_config", None)
    if config is None:
        return contextlib.nullcontext()
    from vllm.config import set_current_vllm_config

    return set_current_vllm_config(config)


# vLLM's reload logs per call: INFO lines (reload time, prefix cache reset) and a warning for
# layers whose buffers no checkpoint holds (RotaryEmbedding's cos/sin cache, put back as it
# was). Three lines per candidate through the search's progress bar; the push's own coverage
# check raises on weights that really were not loaded.
RELOAD_CHATTER = {
    "vllm": logging.WARNING,
    "vllm.model_executor.model_loader.reload.layerwise": logging.ERROR,
}


@contextlib.contextmanager
def quiet_reload() -> Iterator[None]:
    """Raise vLLM's loggers to RELOAD_CHATTER's levels for the push, unless set more verbose
    than INFO on purpose (e.g. VLLM_LOGGING_LEVEL=DEBUG)."""
    saved = {}
    for name, level in RELOAD_CHATTER.items():
        logger = logging.getLogger(name)
        if logging.DEBUG < logger.getEffectiveLevel() < level:
            saved[name] = logger.level
            logger.setLevel(level)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def reloads_given_weights(worker: Any) -> bool:
    """Whether the worker's `reload_weights` loads weights it is given, in checkpoint format.

    The worker's method passes its arguments on to its model runner's, which names them.
    """
    if getattr(worker, "reload_weights", None) is None:
        return False
    for owner in (getattr(worker, "model_runner", None), worker):
        reload = getattr(owner, "reload_weights", None)
        if reload is None:
            continue
        try:
            params = inspect.signature(reload).parameters
        except (TypeError, ValueError):  # no signature to read
            continue
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return {"weights_iterator", "is_checkpoint_format"} <= set(params)
    return True  # only pass-through signatures: the current form


@dataclass
class LoadRecord:
    """What a model's `load_weights` reported loading during one reload."""

    loaded: set[str] = field(default_factory=set)
    reported: bool = True  # False: a release whose loaders return nothing


@contextlib.contextmanager
def recorded_loads(model: Any) -> Iterator[LoadRecord]:
    """The model's `load_weights` records the names it loads while the block runs (what the
    reload loads, for the coverage check), then is put back as it was."""
    record = LoadRecord()
    own_load = model.load_weights
    patched_before = "load_weights" in vars(model)  # vLLM patches some models' loaders

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        result = own_load(*args, **kwargs)
        if result is None:
            record.reported = False
        else:
            record.loaded.update(result)
        return result

    model.load_weights = recording_load
    try:
        yield record
    finally:
        if patched_before:
            model.load_weights = own_load
        else:
            del model.load_weights


def reload_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> list[str]:
    """On one worker: the in-place reload of `weights` (see push_weights); returns the
    parameters no pushed tensor reached (none where the loaders do not report)."""
    model = _worker_model(worker)
    expected = {name for name, _ in model.named_parameters()}
    with recorded_loads(model) as record, torch.inference_mode(), engine_config(worker):
        if reloads_given_weights(worker):
            worker.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        else:
            model.load_weights(iter(weights))
    return sorted(expected - record.loaded) if record.reported else []


def push_weights(llm: Any, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load Hugging Face-named tensors into a live vLLM engine, in place, then drop its caches.

    Each worker runs vLLM's own in-place reload (`reload_weights` with checkpoint-format
    tensors): the model's `load_weights` maps Hugging Face names onto vLLM's fused parameters
    (qkv_proj, gate_up_proj), then the post-load processing that start-up ran (kernel layouts,
    e.g. the CPU build's repacked linear weights) is redone and copied back into the existing
    tensors, so their addresses, and captured CUDA graphs, stay valid. It runs under inference
    mode, as the engine's own worker loop does (the kernel tensors are inference tensors), and
    inside the engine's current config (`engine_config`). Workers whose `reload_weights`
    takes no weights (older releases: it re-reads the checkpoint from disk) call the model's
    `load_weights` alone.

    A parameter the pushed names miss entirely is an error, the check vLLM's start-up loader
    makes; vLLM counts a fused parameter as loaded once any of its parts is, so callers push
    the whole state dict (VLLMBackend does), never a subset.
    """
    weights = list(named)

    def _load(worker: Any) -> list[str]:
        return reload_worker(worker, weights)

    with quiet_reload():
        results = llm.collective_rpc(_load) or ()
        stale = sorted({name for result in results for name in result or ()})
        if stale:
            raise EvaluationError(
                f"vLLM kept its old values for {len(stale)} parameter(s), e.g. {stale[:3]}: "
                "the pushed tensors' names do not cover the engine's model"
            )
        if hasattr(llm, "reset_prefix_cache"):
            llm.reset_prefix_cache()  # cached KV blocks belong to the previous weights
