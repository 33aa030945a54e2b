"""The CPU kernel choices that decide the toy family's bytes, and a child process that runs with
them pinned.

torch and MKL pick their kernels by the CPU they find: the same training run gives other bytes
with AVX-512 kernels than with AVX2 ones, and MKL's own dispatch differs again (measured on the
small family: the unpinned build on an AVX-512 machine, `ATEN_CPU_CAPABILITY=default` and
`MKL_CBWR=COMPATIBLE` each give bytes of their own; each setting is deterministic run to run).
The choices are read once, when torch and MKL load, so they are set in the environment of a
fresh process, never changed inside a running one. This module imports no torch: the command
line consults it before torch starts.

The pins name the AVX2 kernels: every x86-64 machine with AVX2 (Intel since 2013, AMD since
2015) can run them, so all of those build the same bytes; an AVX-512 machine gives up a little
speed on the toy's small matrices. Other machines (ARM, x86-64 without AVX2) cannot run these
kernels and build a family of their own; they use the shipped family instead.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

# ATen's vectorized kernels (elementwise math, reductions, softmax): AVX2, not AVX-512.
# MKL (the float32 matrix products): its AVX2 code path, and STRICT so it never takes a
# shortcut that depends on the data's alignment or the thread count.
# oneDNN picks its ISA the same way; no toy op was seen to reach it, but one that did would
# otherwise follow the CPU.
PINNED_KERNELS: Mapping[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2,STRICT",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
# The thread counts MKL and OpenMP start with; torch.set_num_threads follows in the process.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# CPU flags the pinned kernels need (Linux /proc/cpuinfo names).
REQUIRED_FLAGS = ("avx2", "fma")


def pinned_environment(
    threads: int, kernels: Mapping[str, str] = PINNED_KERNELS, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`base` (default: this process's environment) with `kernels` and `threads` pinned."""
    env = dict(os.environ if base is None else base)
    env.update(kernels)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    return env


def environment_is_pinned(env: Mapping[str, str] | None = None) -> bool:
    """True if `env` (default: this process's) sets every pinned kernel choice."""
    env = os.environ if env is None else env
    return all(env.get(k) == v for k, v in PINNED_KERNELS.items())


def pins_in_force() -> bool:
    """True if this process computes with the pinned kernels: the environment pins them and
    torch, if it has loaded, started under them (a pin set after torch loaded changes nothing)."""
    if not environment_is_pinned():
        return False
    torch = sys.modules.get("torch")
    return torch is None or torch.backends.cpu.get_cpu_capability() == "AVX2"


def cpu_flags() -> set[str]:
    """This CPU's feature flags as Linux names them (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_runs_pinned_kernels() -> bool:
    """True on x86-64 with AVX2 and FMA: the machines that build the shipped bytes."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return all(flag in cpu_flags() for flag in REQUIRED_FLAGS)


def pin_for_this_process(threads: int | None = None) -> None:
    """Set the pins in this process's environment, where the user did not choose otherwise.

    Does nothing once torch has loaded (the choices are read when it loads); the command line
    calls it first thing.
    """
    if "torch" in sys.modules or not cpu_runs_pinned_kernels():
        return
    for name, value in PINNED_KERNELS.items():
        os.environ.setdefault(name, value)
    if threads is not None:
        for name in THREAD_VARIABLES:
            os.environ.setdefault(name, str(threads))
