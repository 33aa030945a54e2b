"""The vLLM backend's push against a recording engine (live engines: test_vllm_engine.py)."""

import contextlib
import logging
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from evomerge.errors import ConfigError, EvaluationError
from evomerge.evaluate import CandidateFailed, EvalSettings, VLLMBackend
from evomerge.evaluate.vllm_backend import push_weights


class RecordingEngine:
    """Records what a vllm.LLM would be asked to do; its model takes the names in `params`.

    With `reload`, its worker has vLLM's `reload_weights`, which runs the model's
    `load_weights` (and records whether inference mode was on).
    """

    def __init__(self, params=None, reload=False, config=None):
        self.params = params
        self.reload = reload
        self.config = config  # the worker's vllm_config, if any
        self.calls: list[tuple] = []

    def collective_rpc(self, method, kwargs=None):
        self.calls.append((method, kwargs))
        worker = SimpleNamespace(model_runner=SimpleNamespace(get_model=lambda: self))
        if self.config is not None:
            worker.vllm_config = self.config
        if self.reload == "from disk":  # older releases: reload_weights() re-reads the files
            worker.reload_weights = lambda: self.calls.append(("reload_from_disk",))
        elif self.reload:

            def reload_weights(weights_iterator, is_checkpoint_format):
                self.calls.append(("reload_weights", is_checkpoint_format, inference_mode()))
                self.load_weights(weights_iterator)

            worker.reload_weights = reload_weights
        return [method(worker)]

    def load_weights(self, weights):
        weights = list(weights)
        self.calls.append(("load_weights", weights))
        return {name for name, _ in weights}

    def named_parameters(self):
        return [(name, None) for name in self.params]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache", None))


def inference_mode() -> bool:
    return torch.is_inference_mode_enabled()


def backend_with(engine, model_dir, tied=False):
    backend = VLLMBackend(model_dir, EvalSettings(backend="vllm", device="cuda"))
    backend._lm = SimpleNamespace(model=engine)  # the engine lm-eval's VLLM wrapper holds
    if engine.params is None:  # vLLM's model has the checkpoint's parameters (one head if tied)
        names = backend.target.state_dict()
        engine.params = [n for n in names if not (tied and n.startswith("lm_head."))]
    return backend


def test_commit_pushes_every_tensor_by_hugging_face_name_then_resets_the_cache(tiny_models):
    engine = RecordingEngine()
    backend = backend_with(engine, tiny_models[0])
    with torch.no_grad():
        backend.target.model.layers[0].mlp.up_proj.weight.fill_(0.25)
    backend.commit_weights()
    (rpc, _), (load, weights), (reset, _) = engine.calls
    assert callable(rpc) and load == "load_weights" and reset == "reset_prefix_cache"
    pushed = dict(weights)
    assert set(pushed) == set(backend.target.state_dict())
    assert torch.all(pushed["model.layers.0.mlp.up_proj.weight"] == 0.25)


def test_tied_embeddings_are_pushed_once(tiny_models):
    engine = RecordingEngine()
    backend = backend_with(engine, tiny_models[0], tied=True)
    backend.target.config.tie_word_embeddings = True
    backend.commit_weights()
    pushed = dict(engine.calls[1][1])
    assert "lm_head.weight" not in pushed and "model.embed_tokens.weight" in pushed


def test_non_finite_weights_never_reach_the_engine(tiny_models):
    engine = RecordingEngine()
    backend = backend_with(engine, tiny_models[0])
    with torch.no_grad():
        backend.target.model.norm.weight[0] = float("inf")
    with pytest.raises(CandidateFailed, match=r"model\.norm\.weight"):
        backend.commit_weights()
    assert engine.calls == []


def test_an_engine_parameter_left_unloaded_is_an_error_naming_it():
    engine = RecordingEngine(params=["w", "model.layers.0.self_attn.qkv_proj.weight"])
    with pytest.raises(EvaluationError, match=r"old values for 1 parameter.*qkv_proj"):
        push_weights(engine, [("w", torch.ones(2))])
    assert engine.calls[-1][0] != "reset_prefix_cache"


def test_a_vllm_that_cannot_be_imported_is_an_error_naming_the_module(tiny_models, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval.models.vllm_causallms", None)  # import fails
    backend = VLLMBackend(tiny_models[0], EvalSettings(backend="vllm", device="cuda"))
    with pytest.raises(EvaluationError, match=r"could not import vLLM .*vllm_causallms"):
        _ = backend.lm


def test_the_engine_never_draws_its_own_progress_bar(tiny_models, monkeypatch):
    """lm-eval asks vLLM for a bar per call; with tqdm disabled vLLM 0.26 then divides by 0."""
    calls = []

    class FakeLLM:
        llm_engine = "engine"

        def collective_rpc(self, method):
            return []  # no worker: nothing to watch

        def generate(self, prompts, sampling_params=None, use_tqdm=True, lora_request=None):
            calls.append(use_tqdm)
            return ["out"] * len(prompts)

    class FakeVLLM:  # lm-eval's wrapper: builds the engine, then calls generate(use_tqdm=True)
        def __init__(self, **kwargs):
            self.model = FakeLLM()

        def generate_until(self, prompts):
            return self.model.generate(prompts, sampling_params=None, use_tqdm=True)

    fake = ModuleType("lm_eval.models.vllm_causallms")
    fake.VLLM = FakeVLLM  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lm_eval.models.vllm_causallms", fake)
    backend = VLLMBackend(tiny_models[0], EvalSettings(backend="vllm", device="cuda"))
    assert backend.lm.generate_until(["a", "b"]) == ["out", "out"]
    assert calls == [False]
    assert backend.lm.model.llm_engine == "engine"  # the rest is the engine's own


def test_workers_with_vllms_reload_load_through_it_in_inference_mode(tiny_models):
    engine = RecordingEngine(reload=True)
    backend = backend_with(engine, tiny_models[0])
    backend.commit_weights()
    (rpc, _), reload, (load, weights), (reset, _) = engine.calls
    assert callable(rpc)
    assert reload == ("reload_weights", True, True)  # checkpoint format, under inference mode
    assert load == "load_weights" and reset == "reset_prefix_cache"
    assert {n for n, _ in weights} == set(backend.target.state_dict())
    assert "load_weights" not in vars(engine)  # the model's own loader is back in place


def test_a_parameter_the_reload_left_alone_is_an_error_naming_it():
    engine = RecordingEngine(params=["w", "model.norm.weight"], reload=True)
    with pytest.raises(EvaluationError, match=r"old values for 1 parameter.*model\.norm"):
        push_weights(engine, [("w", torch.ones(2))])
    assert engine.calls[-1][0] != "reset_prefix_cache"


def test_the_reload_runs_inside_the_engines_config(tiny_models, monkeypatch):
    """Layers may read vLLM's current config while processing weights (0.26 does not set it)."""
    events = []

    @contextlib.contextmanager
    def set_current_vllm_config(config):
        events.append(("set", config))
        yield
        events.append(("unset", config))

    fake = ModuleType("vllm.config")
    fake.set_current_vllm_config = set_current_vllm_config  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm.config", fake)
    engine = RecordingEngine(reload=True, config="engine config")
    original = engine.load_weights

    def load_weights(weights):
        events.append(("load", None))
        return original(weights)

    engine.load_weights = load_weights  # type: ignore[method-assign]
    backend_with(engine, tiny_models[0]).commit_weights()
    assert events == [("set", "engine config"), ("load", None), ("unset", "engine config")]
    assert engine.load_weights is load_weights  # a loader patched onto the model stays


def test_the_reloads_per_candidate_chatter_stays_out_of_the_output(tiny_models, caplog):
    """vLLM logs three lines per reload; only errors get through during the push."""
    engine = RecordingEngine(reload=True)
    original = engine.load_weights

    def chatty_load(weights):
        logging.getLogger("vllm.v1.worker.gpu_model_runner").info("Reloading weights took 0.02 s")
        layerwise = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        layerwise.warning("RotaryEmbedding: Failed to load weights")
        logging.getLogger("vllm.engine").error("a real error")
        return original(weights)

    engine.load_weights = chatty_load  # type: ignore[method-assign]
    vllm_logger = logging.getLogger("vllm")
    vllm_logger.setLevel(logging.INFO)  # vLLM's default
    try:
        with caplog.at_level(logging.INFO):
            backend_with(engine, tiny_models[0]).commit_weights()
            logging.getLogger("vllm.engine").info("after the push")
        assert [r.getMessage() for r in caplog.records] == ["a real error", "after the push"]
    finally:
        vllm_logger.setLevel(logging.NOTSET)


def test_engine_args_reach_the_engine_and_may_not_repeat_the_evaluators_own(
    tiny_models, monkeypatch
):
    seen = {}

    class FakeVLLM:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            self.model = SimpleNamespace(collective_rpc=lambda method: [])

    fake = ModuleType("lm_eval.models.vllm_causallms")
    fake.VLLM = FakeVLLM  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lm_eval.models.vllm_causallms", fake)
    settings = EvalSettings.from_dict(
        {"backend": "vllm", "dtype": "bfloat16", "engine_args": {"enforce_eager": True}}
    )
    _ = VLLMBackend(tiny_models[0], settings).lm
    assert seen["enforce_eager"] is True
    assert seen["dtype"] == "bfloat16" and seen["pretrained"] == str(tiny_models[0])
    with pytest.raises(ConfigError, match=r"evaluator\.engine_args\.max_model_len: .*max_length"):
        EvalSettings.from_dict({"backend": "vllm", "engine_args": {"max_model_len": 512}})


def test_the_shadow_model_lives_on_the_host_device(tiny_models):
    assert VLLMBackend(tiny_models[0], EvalSettings(backend="vllm")).host_device == "cpu"
    backend = VLLMBackend(tiny_models[0], EvalSettings(backend="vllm"), host_device="meta")
    assert {p.device.type for p in backend.target.parameters()} == {"meta"}


class SteppingLLM:
    """vllm.LLM's offline loop: generate adds requests, then steps the engine until none is
    left; each step takes `step_s` and finishes one request."""

    def __init__(self, step_s=0.0, request_states=True, fail_at=None):
        self.step_s = step_s
        self.fail_at = fail_at  # raise out of memory at this step
        self.llm_engine = self
        self.pending: list[str] = []
        self.aborted: list[str] = []
        self.steps = 0
        if request_states:
            self.output_processor = self

    @property
    def request_states(self):  # the output processor's record: request id -> state
        return dict.fromkeys(self.pending)

    def generate(self, prompts, use_tqdm=True):
        self.pending += list(prompts)
        done = []
        while self.has_unfinished_requests():
            done += self.step()
        return done

    def step(self):
        import time

        time.sleep(self.step_s)
        self.steps += 1
        if self.steps == self.fail_at:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [self.pending.pop(0)]

    def has_unfinished_requests(self):
        return bool(self.pending)

    def abort_request(self, ids):
        self.aborted += ids
        self.pending = [r for r in self.pending if r not in ids]


@pytest.mark.parametrize("request_states", [True, False])
def test_a_candidate_past_its_deadline_fails_and_leaves_the_engine_idle(request_states):
    from evomerge.evaluate.vllm_backend import QuietLLM

    llm = SteppingLLM(step_s=0.05, request_states=request_states)
    engine = QuietLLM(llm)
    with engine.armed(timeout_s=0.12), pytest.raises(CandidateFailed) as failed:
        engine.generate(list("abcdefgh"))
    assert failed.value.reason == "timeout"
    assert not llm.has_unfinished_requests()  # nothing left over for the next candidate
    if request_states:
        assert 2 <= llm.steps <= 4 and len(llm.aborted) == 8 - llm.steps
    else:  # no record of the ids: the requests ran to the end
        assert llm.steps == 8
    assert "step" not in vars(llm)  # the engine's own step is back
    assert engine.generate(["x", "y"]) == ["x", "y"]  # no answer of the failed candidate
    with engine.armed(timeout_s=None):
        assert engine.generate(["z"]) == ["z"]


def test_an_engine_error_mid_generation_leaves_no_request_queued():
    from evomerge.evaluate.vllm_backend import QuietLLM

    llm = SteppingLLM(fail_at=3)
    engine = QuietLLM(llm)
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.generate(list("abcdef"))
    assert llm.aborted == list("cdef") and not llm.has_unfinished_requests()
    assert engine.generate(["x"]) == ["x"]


def test_a_reload_that_takes_no_weights_is_not_used_for_the_push():
    """Older vLLM workers' reload_weights() re-reads the checkpoint from disk: never call it."""
    from evomerge.evaluate.vllm_backend import reloads_given_weights

    def current(weights_iterator=None, is_checkpoint_format=True): ...
    def from_disk(): ...
    def anything(**kwargs): ...

    assert reloads_given_weights(SimpleNamespace(reload_weights=current))
    assert reloads_given_weights(SimpleNamespace(reload_weights=anything))
    assert not reloads_given_weights(SimpleNamespace(reload_weights=from_disk))
    assert not reloads_given_weights(SimpleNamespace())
    # vLLM's worker passes everything on to its model runner, whose signature decides
    runner_old = SimpleNamespace(reload_weights=from_disk)
    runner_new = SimpleNamespace(reload_weights=current)
    assert not reloads_given_weights(
        SimpleNamespace(reload_weights=anything, model_runner=runner_old)
    )
    assert reloads_given_weights(SimpleNamespace(reload_weights=anything, model_runner=runner_new))
    engine = RecordingEngine(params=["w"], reload="from disk")
    push_weights(engine, [("w", torch.ones(2))])
    assert ("reload_from_disk",) not in engine.calls
    assert any(call[0] == "load_weights" for call in engine.calls)


class LogitsLayer(torch.nn.Module):
    """Stands for vLLM's LogitsProcessor layer: hidden states through the head -> logits."""

    def forward(self, lm_head, hidden_states):
        return hidden_states @ lm_head.weight.T


class HookedLLM:
    """A vllm.LLM with one in-process worker whose model computes each request's logits
    through a LogitsLayer, as vLLM's models do; `generate` runs one step per prompt."""

    def __init__(self, with_layer=True):
        self.llm_engine = SteppingLLM()
        self.lm_head = torch.nn.Linear(4, 8, bias=False)
        self.model = torch.nn.Module()
        if with_layer:
            self.model.logits_processor = LogitsLayer()
        self.worker = SimpleNamespace(model_runner=SimpleNamespace(get_model=lambda: self.model))

    def collective_rpc(self, method):
        return [method(self.worker)]

    def generate(self, prompts, use_tqdm=True):
        out = []
        for prompt in prompts:
            if prompt == "boom":
                raise RuntimeError("CUDA out of memory")
            logits = self.model.logits_processor(self.lm_head, torch.ones(1, 4))
            out.append(int(logits.argmax()))
        return out


@pytest.fixture
def vllm_logits_layer(monkeypatch):
    install_logits_layer(monkeypatch)


def install_logits_layer(monkeypatch):
    """vLLM's module path for its logits layer, holding LogitsLayer."""
    names = ["vllm", "vllm.model_executor", "vllm.model_executor.layers"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, ModuleType(name))
    leaf = ModuleType("vllm.model_executor.layers.logits_processor")
    leaf.LogitsProcessor = LogitsLayer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, leaf.__name__, leaf)


def test_a_candidate_with_non_finite_logits_fails_and_the_next_is_scored(vllm_logits_layer):
    from evomerge.evaluate.vllm_backend import QuietLLM, watch_logits

    llm = HookedLLM()
    engine = QuietLLM(llm, watch_logits=watch_logits(llm))
    assert engine.watch_logits and watch_logits(llm)  # hooked once, however often asked
    assert len(llm.model.logits_processor._forward_hooks) == 1
    before = engine.generate(["a", "b"])
    with torch.no_grad():
        llm.lm_head.weight[3, 0] = float("inf")  # finite elsewhere; one logit overflows
    with pytest.raises(CandidateFailed) as failed:
        engine.generate(["a", "b"])
    assert failed.value.reason == "nan" and "non-finite logits" in str(failed.value)
    with torch.no_grad():
        llm.lm_head.weight[3, 0] = 0.5
    assert engine.generate(["a", "b"]) == before  # the next candidate is not blamed


def test_a_candidate_failing_otherwise_leaves_no_non_finite_flag_behind(vllm_logits_layer):
    from evomerge.evaluate.vllm_backend import QuietLLM, watch_logits

    llm = HookedLLM()
    engine = QuietLLM(llm, watch_logits=watch_logits(llm))
    with torch.no_grad():
        llm.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.generate(["a", "boom"])  # fails after one step with NaN logits
    with torch.no_grad():
        llm.lm_head.weight[0, 0] = 0.5
    assert len(engine.generate(["a"])) == 1

    def dead(method):
        raise RuntimeError("EngineDeadError")

    llm.collective_rpc = dead  # the engine died of the error: its own error is the one raised
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.generate(["boom"])


@pytest.mark.parametrize("where", ["no layer in the model", "no such module in vLLM"])
def test_an_engine_whose_logits_cannot_be_watched_says_so(where, monkeypatch, caplog):
    from evomerge.evaluate.vllm_backend import watch_logits

    if where == "no layer in the model":
        install_logits_layer(monkeypatch)
    else:
        monkeypatch.setitem(sys.modules, "vllm.model_executor.layers.logits_processor", None)
    with caplog.at_level(logging.WARNING):
        assert not watch_logits(HookedLLM(with_layer=where != "no layer in the model"))
    assert "non-finite logits will not fail a candidate" in caplog.text
