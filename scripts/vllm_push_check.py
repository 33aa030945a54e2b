"""The vLLM weight push against vLLM's own model class, on the CPU (no GPU, no engine).

    python scripts/vllm_push_check.py [MODEL_DIR]    # default: the small toy family's lang_ja

Needs vLLM's Python code importable (its CUDA kernels are never called), e.g. a venv created
with --system-site-packages over this project's, then `pip install --no-deps vllm==0.26.0`
and the pure-Python packages its imports ask for (results/README.md lists them).

It builds the class the engine runs for the checkpoint (LlamaForCausalLM, bfloat16) on the
CPU, then pushes the Hugging Face model's tensors through `push_weights` exactly as
VLLMBackend does, with a stand-in for `LLM.collective_rpc` that calls the function on the
worker (what vLLM's in-process executor does). Two pushes, the second with perturbed weights;
each must leave every fused parameter (qkv_proj, gate_up_proj) equal to its Hugging Face parts
in order, the embedding and head rows equal, and every parameter at its old address (CUDA
graphs read them there). A push missing a whole tensor must fail naming it. Exit status 1 on
any failure.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evomerge.errors import EvaluationError
from evomerge.evaluate.backends import load_hf_model, push_weights
from evomerge.evaluate.settings import EvalSettings

# A torch.library registration and vLLM's current-config context last as long as their objects.
KEEP_ALIVE: list[Any] = []


def cpu_vllm_model(path: str) -> torch.nn.Module:
    """vLLM's model for `path`, built on the CPU platform, world size 1 (gloo)."""
    # vLLM's CPU platform expects its CPU build's `_C` ops; building a Llama touches only
    # silu_and_mul, so a plain-torch one stands in (the forward pass is never run here).
    if not hasattr(torch.ops._C, "silu_and_mul"):
        lib = torch.library.Library("_C", "FRAGMENT")
        lib.define("silu_and_mul(Tensor(a!) out, Tensor x) -> ()")

        def silu_and_mul(out: torch.Tensor, x: torch.Tensor) -> None:
            d = x.shape[-1] // 2
            out.copy_(torch.nn.functional.silu(x[..., :d]) * x[..., d:])

        lib.impl("silu_and_mul", silu_and_mul, "CPU")
        KEEP_ALIVE.append(lib)

    import vllm.platforms
    from vllm.platforms.cpu import CpuPlatform

    vllm.platforms._current_platform = CpuPlatform()
    from vllm.config import DeviceConfig, ModelConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.model_loader.utils import get_model_architecture
    from vllm.utils.torch_utils import set_default_torch_dtype

    model_config = ModelConfig(model=path, dtype="bfloat16", max_model_len=64)
    config = VllmConfig(model_config=model_config, device_config=DeviceConfig(device="cpu"))
    context = set_current_vllm_config(config)
    context.__enter__()
    KEEP_ALIVE.append(context)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    init_distributed_environment(
        world_size=1,
        rank=0,
        local_rank=0,
        distributed_init_method=f"tcp://127.0.0.1:{port}",
        backend="gloo",
    )
    initialize_model_parallel(1, 1)
    model_class, _ = get_model_architecture(model_config)
    with set_default_torch_dtype(torch.bfloat16):
        return model_class(vllm_config=config)


class InProcessEngine:
    """What vllm.LLM does in-process: collective_rpc calls the function on the one worker."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.resets = 0

    def collective_rpc(
        self, method: Any, timeout: Any = None, args: tuple = (), kwargs: Any = None
    ):
        worker = SimpleNamespace(model_runner=SimpleNamespace(get_model=lambda: self.model))
        return [method(worker, *args, **(kwargs or {}))]

    def reset_prefix_cache(self) -> bool:
        self.resets += 1
        return True


def check_push(engine: InProcessEngine, hf: dict[str, torch.Tensor]) -> list[str]:
    """Push `hf`; the mismatches between the engine's parameters and `hf` (empty: all equal)."""
    before = {n: p.data_ptr() for n, p in engine.model.named_parameters()}
    resets = engine.resets
    push_weights(engine, list(hf.items()))
    got = dict(engine.model.named_parameters())
    bad = [n for n, p in got.items() if p.data_ptr() != before[n]]  # moved: graphs go stale
    dtype = next(iter(got.values())).dtype
    fused = {
        "self_attn.qkv_proj.weight": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        "mlp.gate_up_proj.weight": ["mlp.gate_proj", "mlp.up_proj"],
    }
    for name, param in got.items():
        prefix, _, rest = name.partition("layers.")
        layer = rest.split(".", 1)[0] if rest else ""
        tail = rest.split(".", 1)[1] if rest else name
        if tail in fused:
            parts = [hf[f"{prefix}layers.{layer}.{p}.weight"] for p in fused[tail]]
            want = torch.cat(parts).to(dtype)
        else:
            want = hf[name].to(dtype)
        # vLLM pads the vocabulary (embedding and head rows) to a multiple of 64
        if not torch.equal(param.data[: want.shape[0]], want):
            bad.append(name)
    if engine.resets != resets + 1:
        bad.append("(prefix cache not reset)")
    return bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", nargs="?", help="checkpoint directory (default: small toy lang_ja)")
    args = p.parse_args()
    path = args.model
    if path is None:
        from evomerge.toy import ensure_family

        path = str(ensure_family(size="small").path("lang_ja"))
    import vllm

    print(f"vLLM {vllm.__version__}, torch {torch.__version__}, model {path}")
    engine = InProcessEngine(cpu_vllm_model(path))
    shadow, _ = load_hf_model(path, EvalSettings())
    failures = 0
    for push in ("the checkpoint", "perturbed weights"):
        if push == "perturbed weights":
            with torch.no_grad():
                for t in shadow.parameters():
                    t.add_(torch.randn_like(t) * 0.01)
        hf = shadow.state_dict()
        bad = check_push(engine, hf)
        n = sum(1 for _ in engine.model.parameters())
        print(
            f"push of {push}: {n - len(bad)} of {n} engine parameters as expected"
            + (f"; wrong: {bad[:5]}" if bad else ", none moved, prefix cache reset")
        )
        failures += bool(bad)
    for drop in ("model.layers.1.self_attn.o_proj.weight", "lm_head.weight"):
        partial = [(k, v) for k, v in shadow.state_dict().items() if k != drop]
        try:
            push_weights(engine, partial)
            print(f"push without {drop}: NOT detected")
            failures += 1
        except EvaluationError as e:
            print(f"push without {drop}: EvaluationError ({str(e)[:90]}...)")
    print("ok" if not failures else f"{failures} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
