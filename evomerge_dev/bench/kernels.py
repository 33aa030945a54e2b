"""Seconds of the entry-wise pieces of the merge methods on one large tensor, per thread count.

    python -m evomerge_dev.bench.kernels [--entries 50e6] [--threads 1 2] [--repetitions 3]

Times, on float32 task vectors of --entries entries (a matrix of width 4096; bfloat16-valued,
so magnitudes tie as real checkpoints' do): DARE's counter-based drop (drops.CounterDraws),
TIES' magnitude selection under each tie rule, breadcrumbs' outlier selection, DELLA's
ranks, and the sign-elected sum of two task vectors; each the median of --repetitions, one
child-free process, torch.set_num_threads(T); wall seconds and the process's CPU seconds (less
sensitive to a busy machine). A memory-speed reference: one copy of the tensor; the
"whole-tensor passes" rows are the same arithmetic as one torch op per pass over the tensor
(how it ran before blocks).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from evomerge.merge.drops import CounterDraws
from evomerge.merge.methods.task_vectors import _elected_sum, magnitude_ranks
from evomerge.merge.selection import MERGEKIT, THRESHOLD, Selection
from evomerge.merge.sparsify import _keep_largest_, sparsify_

WIDTH = 4096  # columns of the test matrix (a 0.5B-1B model's widths are 2048-8192)


def cases(delta: torch.Tensor) -> dict[str, Callable[[], object]]:
    pair = torch.stack([delta, delta.flip(0)])
    weights = torch.ones(2, 1, 1)
    return {
        "copy (memory reference)": lambda: delta.clone(),
        "counter drop 0.5": lambda: CounterDraws(7).drop_(delta.clone(), 0.5),
        "magnitude 0.5, mergekit": lambda: sparsify_(
            "magnitude", delta.clone(), density=0.5, selection=Selection(MERGEKIT)
        ),
        "magnitude 0.5, threshold": lambda: sparsify_(
            "magnitude", delta.clone(), density=0.5, selection=Selection(THRESHOLD)
        ),
        "outliers 0.5/0.01, mergekit": lambda: sparsify_(
            "outliers", delta.clone(), density=0.5, gamma=0.01, selection=Selection(MERGEKIT)
        ),
        "outliers 0.5/0.01, threshold": lambda: sparsify_(
            "outliers", delta.clone(), density=0.5, gamma=0.01, selection=Selection(THRESHOLD)
        ),
        "magnitude 0.5, threshold, whole-tensor passes": lambda: _keep_largest_(
            (d := delta.clone()), d.abs(), int(0.5 * d.numel())
        ),
        "della ranks": lambda: magnitude_ranks(delta, None),
        "sign-elected sum of 2": lambda: _elected_sum(pair.clone(), weights, False),
        "sign-elected sum of 2, whole-tensor passes": lambda: _whole_elected_sum(pair.clone()),
    }


def _whole_elected_sum(deltas: torch.Tensor) -> torch.Tensor:
    """The sign-elected sum of two task vectors as whole-tensor passes (before blocks)."""
    elected = torch.add(deltas[0], deltas[1]).sign_().add_(0.5).sign_()
    kept = deltas.mul_(elected).clamp_(min=0)
    return torch.add(kept[0], kept[1]).mul_(elected)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--entries", type=float, default=50e6)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--only", nargs="*", default=None, help="case names to time (substrings)")
    args = p.parse_args()
    rows = max(1, int(args.entries) // WIDTH)
    gen = torch.Generator().manual_seed(0)
    delta = (torch.randn(rows, WIDTH, generator=gen) * 0.002).to(torch.bfloat16).float()
    print(f"{rows} x {WIDTH} float32 ({delta.numel() / 1e6:.0f}M entries, bfloat16 values)")
    for name, fn in cases(delta).items():
        if args.only and not any(o in name for o in args.only):
            continue
        times = []
        for threads in args.threads:
            torch.set_num_threads(threads)
            fn()  # warm
            runs, cpu = [], []
            for _ in range(args.repetitions):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                runs.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            wall, used = statistics.median(runs), statistics.median(cpu)
            times.append(f"{threads}t {wall:6.2f} s (cpu {used:5.2f} s)")
        print(f"{name:44s} " + "  ".join(times), flush=True)


if __name__ == "__main__":
    main()
