"""Build the toy family into a directory, and find or build it in the cache on first use.

A family directory holds one Hugging Face model directory per model (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json) and `family.json` (the manifest:
version, size, names, probe scores, build seconds). It is written to a temporary sibling and
renamed into place, so a crash never leaves a half-built family that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import LlamaForCausalLM

from evomerge.errors import ConfigError
from evomerge.kernels import (
    PINNED_KERNELS,
    cpu_runs_pinned_kernels,
    pinned_environment,
    pins_in_force,
)
from evomerge.toy.family import (
    BASE_MIX,
    FamilyConfig,
    family_config,
    make_model,
    train,
    with_replay,
)
from evomerge.toy.probe import score
from evomerge.toy.tasks import task_examples
from evomerge.toy.tokenizer import make_tokenizer

# Bump when data, vocabulary, architecture or schedule change: it names the cache directory.
FAMILY_VERSION = 4
MANIFEST = "family.json"
BASE = "base"


@dataclass(frozen=True)
class ToyFamily:
    """A built family on disk. Model directories load with `from_pretrained`."""

    root: Path
    manifest: dict[str, Any]

    @property
    def names(self) -> list[str]:
        """`base` first, then the specialists (e.g. `math_en`, `lang_ja`)."""
        return list(self.manifest["models"])

    def path(self, name: str) -> Path:
        if name not in self.manifest["models"]:
            raise ConfigError(f"toy family has no model {name!r}; it has {self.names}")
        return self.root / name

    @property
    def base(self) -> Path:
        return self.path(BASE)

    @property
    def specialists(self) -> dict[str, Path]:
        return {n: self.root / n for n in self.names if n != BASE}

    @property
    def probe_scores(self) -> dict[str, dict[str, float]]:
        """model -> task -> accuracy on the test split, measured when the family was built."""
        return {n: m["scores"] for n, m in self.manifest["models"].items()}


def default_cache_dir() -> Path:
    return Path(os.environ.get("EVOMERGE_CACHE") or Path.home() / ".cache" / "evomerge")


def family_dirname(size: str) -> str:
    return f"toy-v{FAMILY_VERSION}-{size}"


def load_family(root: Path) -> ToyFamily:
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ConfigError(f"{root} is not a toy family: {MANIFEST} is missing")
    return ToyFamily(root, json.loads(manifest_path.read_text()))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run with `threads` torch threads, then restore the old count."""
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(old)


def probe_scores(model: LlamaForCausalLM, cfg: FamilyConfig) -> dict[str, float]:
    tasks = ["toy_mgsm_ja", *dict.fromkeys(s.probe for s in cfg.specialists)]
    return {t: score(model, task_examples(t)).acc for t in tasks}


def _save(model: LlamaForCausalLM, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    make_tokenizer().save_pretrained(path)


def _train_all(cfg: FamilyConfig, out: Path, progress: bool) -> dict[str, Any]:
    models: dict[str, Any] = {}
    with tqdm(total=cfg.total_steps, disable=not progress, unit="step") as bar:

        def tick(loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update()

        bar.set_description(BASE)
        model = make_model(cfg)
        train(
            model,
            BASE_MIX,
            steps=cfg.base_steps,
            lr=cfg.base_lr,
            cfg=cfg,
            seed=cfg.data_seed,
            on_step=tick,
        )
        base_state = {k: v.clone() for k, v in model.state_dict().items()}
        _save(model, out / BASE)
        models[BASE] = {"scores": probe_scores(model, cfg)}
        for spec in cfg.specialists:
            bar.set_description(spec.name)
            model.load_state_dict(base_state)
            mix = with_replay(spec.mix, cfg.replay)
            train(
                model,
                mix,
                steps=cfg.steps(spec),
                lr=cfg.lr(spec),
                cfg=cfg,
                seed=spec.seed,
                on_step=tick,
            )
            _save(model, out / spec.name)
            models[spec.name] = {"scores": probe_scores(model, cfg), "probe": spec.probe}
    return models


def build_family(
    out_dir: Path | str,
    size: str = "full",
    *,
    threads: int | None = None,
    progress: bool = False,
    draw: int = 0,
) -> ToyFamily:
    """Train the family of `size` ("full" or "small") at `draw` of its seeds into `out_dir`,
    which must not exist.

    Deterministic: the same size, draw, thread count and CPU kernels give the same bytes.
    `threads` defaults to the size's `FamilyConfig.threads`; `build_family_pinned` also fixes
    the kernels, so every x86-64 machine with AVX2 builds the same family.
    """
    out = Path(out_dir)
    if out.exists():
        raise ConfigError(f"{out} already exists; remove it or choose another --out")
    cfg = family_config(size, draw)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        start = time.perf_counter()
        with torch_threads(cfg.threads if threads is None else threads) as n:
            models = _train_all(cfg, tmp, progress)
        manifest = {
            "version": FAMILY_VERSION,
            "size": size,
            "draw": draw,
            "threads": n,
            "kernels": kernels_in_use(),
            "build_seconds": round(time.perf_counter() - start, 1),
            "config": asdict(cfg),
            "models": models,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
        _rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_family(out)


def _rename(tmp: Path, out: Path) -> None:
    try:
        tmp.rename(out)
    except OSError as e:  # another process got there first (a non-empty directory)
        if out.exists():
            raise ConfigError(f"{out} already exists; remove it or choose another --out") from e
        raise


def kernels_in_use() -> dict[str, Any]:
    """What decided this process's arithmetic: ATen's kernel level and the pins in force."""
    return {"capability": torch.backends.cpu.get_cpu_capability(), "pinned": pins_in_force()}


def build_family_pinned(
    out_dir: Path | str,
    size: str = "full",
    *,
    threads: int | None = None,
    progress: bool = False,
    kernels: Mapping[str, str] | None = None,
    draw: int = 0,
) -> ToyFamily:
    """`build_family` in a child process with the kernel choices pinned (evomerge/kernels.py).

    Every x86-64 machine with AVX2 builds the same bytes this way. Where the CPU cannot run
    the pinned kernels, the child pins only its threads and the family is this machine's own
    (its manifest says so under `kernels`). `kernels` replaces the pins (to show they matter).
    """
    out = Path(out_dir)
    if out.exists():
        raise ConfigError(f"{out} already exists; remove it or choose another --out")
    n = family_config(size, draw).threads if threads is None else threads
    if n < 1:
        raise ConfigError(f"threads must be >= 1, got {n}")
    if kernels is None:
        kernels = PINNED_KERNELS if cpu_runs_pinned_kernels() else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".toy-build-") as scratch:
        errfile = Path(scratch) / "error.txt"
        cmd = [sys.executable, "-m", "evomerge.toy.child", str(out), size, str(n), str(errfile)]
        cmd += ["--draw", str(draw)]
        done = subprocess.run(
            [*cmd, *(["--progress"] if progress else [])],
            env=pinned_environment(n, kernels),
            check=False,
        )
        if done.returncode != 0:
            why = errfile.read_text().strip() if errfile.is_file() else ""
            raise ConfigError(
                why or f"toy build: the build process failed (exit {done.returncode})"
            )
    return load_family(out)
