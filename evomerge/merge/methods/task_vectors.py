"""Methods on task vectors tau_i = x_i - base: sparsify, weight, elect signs, combine.

Definitions follow mergekit 0.1.5 (same YAML names, parameters and defaults, and the same
operation order so float32 results agree); the deliberate differences are listed in the README.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evomerge.merge import sparsify
from evomerge.merge.blocks import map_blocks
from evomerge.merge.drops import CounterDraws
from evomerge.merge.methods.base import MergeArgs, Tensor
from evomerge.merge.selection import Selection, top_variance


def _task_arithmetic(
    tensors: Sequence[Tensor],
    base: Tensor | None,
    args: MergeArgs,
    *,
    sparsifier: str | None,
    consensus: bool,
) -> Tensor:
    """Generalized task arithmetic: sparsify each task vector, weight, elect signs, sum.

    Task vectors tau_i = x_i - base (arXiv:2212.04089); TIES trims by magnitude and keeps only
    entries agreeing with the sign of the weighted sum (arXiv:2306.01708, eq. of step 2-3);
    DARE drops at random and rescales (arXiv:2311.03099); breadcrumbs drops the smallest and
    the largest-magnitude outliers (arXiv:2312.06795); DELLA drops at random with a keep
    probability that grows with the entry's magnitude rank (arXiv:2406.11617).
    """
    if base is None:
        raise ValueError("task arithmetic needs a base tensor")  # the planner guarantees one
    deltas = _sparse_deltas(tensors, base, args, sparsifier)
    weights = torch.tensor(args.per_model["weight"], dtype=deltas.dtype, device=deltas.device)
    weights = weights.reshape(-1, *([1] * base.dim()))  # (N, 1, ..., 1)
    deltas.mul_(weights)
    normalize = bool(args.shared["normalize"])
    if consensus:
        mixed = _elected_sum(deltas, weights, normalize)
        del deltas
    else:
        mixed = _sum_rows(deltas)
        del deltas
        if normalize:
            total = weights.sum(dim=0)
            total[total.abs() < 1e-8] = 1
            mixed /= total
    if args.shared["lambda"] != 1:
        mixed *= args.shared["lambda"]
    return mixed.add_(base)  # = base + mixed, without one more tensor of memory


def _sparse_deltas(
    tensors: Sequence[Tensor], base: Tensor, args: MergeArgs, sparsifier: str | None
) -> Tensor:
    """(N, *shape) task vectors, each sparsified in place as the method says."""
    rescale = bool(args.shared["rescale"])
    n = len(args.task_vectors) or len(tensors)
    deltas = base.new_empty((n, *base.shape))  # (N, *shape), filled row by row
    for i in range(n):
        l1 = None
        if args.task_vectors:
            deltas[i].copy_(args.task_vectors[i].delta)
            l1 = args.task_vectors[i].l1
        else:
            torch.sub(tensors[i], base, out=deltas[i])
        generator = args.generators[i] if args.generators else None
        density = float(args.per_model["density"][i]) if sparsifier else 1.0
        if sparsifier == "della":
            epsilon = float(args.per_model["epsilon"][i])
            della_prune_(
                deltas[i],
                density,
                epsilon,
                rescale=rescale,
                generator=generator,
                selection=args.selection,
            )
        elif sparsifier is not None:
            sparsify.sparsify_(
                sparsifier,
                deltas[i],
                density=density,
                gamma=float(args.per_model.get("gamma", [0.0] * n)[i]),
                rescale=rescale,
                generator=generator,
                l1=l1,
                selection=args.selection,
            )
    return deltas


def _elected_sum(deltas: Tensor, weights: Tensor, normalize: bool) -> Tensor:
    """TIES' merge of weighted (N, *shape) deltas (overwritten): the sum of the entries that
    agree with the elected sign s = sign(sum), ties electing +; with `normalize`, divided by
    the sum of the agreeing weights (1 where none agrees). Entry-wise, so on CPU it runs on
    column blocks that stay in cache, spread over threads (blocks.py)."""
    flat = deltas.view(deltas.shape[0], -1)
    mixed = torch.empty(flat.shape[1], dtype=deltas.dtype, device=deltas.device)
    width = _ELECTION_BLOCK if deltas.device.type == "cpu" else max(1, flat.shape[1])
    alphas = weights.reshape(-1).tolist()

    def elect(i: int) -> None:
        columns = slice(i * width, (i + 1) * width)
        _elect_block(flat[:, columns], mixed[columns], alphas if normalize else None)

    map_blocks(-(-flat.shape[1] // width), elect, deltas.device)
    return mixed.view(deltas.shape[1:])


# Entries per row of one election block: N rows of 128 KB of float32 stay in L2.
_ELECTION_BLOCK = 1 << 15


def _elect_block(deltas: Tensor, out: Tensor, alphas: list[float] | None) -> None:
    """_elected_sum of one (N, B) block into `out`; `alphas`: the weights, to normalize."""
    # s * sum(max(s * delta, 0)): equal to masking by sign_agreement, in three passes over
    # the deltas instead of six. s in float arithmetic, sign(sign(sum) + 1/2): torch.where
    # on a bool tensor is 10-40x slower.
    elected = _sum_rows(deltas).sign_().add_(0.5).sign_()
    kept = deltas.mul_(elected).clamp_(min=0)
    torch.mul(_sum_rows(kept), elected, out=out)
    if alphas is None:
        return
    # the agreement itself, sign(max(s * delta, 0)) in {0, 1}, weighs the divisor (float
    # arithmetic; bool kernels are much slower)
    divisor = torch.zeros_like(out)
    for w, row in zip(alphas, kept.sign_(), strict=True):
        divisor.add_(row, alpha=w)
    divisor.add_(divisor.abs().sign_().neg_().add_(1))  # 0 -> 1, the rest unchanged
    out /= divisor


def _sum_rows(stacked: Tensor) -> Tensor:
    """stacked.sum(dim=0); two rows as one add (the same sum, 4x faster on CPU)."""
    if stacked.shape[0] == 2:
        return torch.add(stacked[0], stacked[1])
    return stacked.sum(dim=0)


def sign_agreement(deltas: Tensor) -> Tensor:
    """(N, *shape) bool: entries whose sign is the elected one, sign(sum of deltas) (TIES).

    A zero sum elects +; zero entries never agree.
    """
    positive = deltas.sum(dim=0) >= 0
    return torch.where(positive, deltas > 0, deltas < 0)


def della_prune_(
    delta: Tensor,
    density: float,
    epsilon: float,
    *,
    rescale: bool,
    generator: torch.Generator | sparsify.RandomDraws | CounterDraws | None,
    selection: Selection | None = None,
) -> None:
    """In place: DELLA's MagPrune. Keep probability density - eps + 2 eps r, r in [0, 1].

    r is the entry's magnitude rank within its row (dimension 1; a vector is one row), scaled
    to [0, 1], so the mean keep probability is `density`. With `rescale`, survivors restore
    the task vector's L1 norm (mergekit's rule; the paper divides by each keep probability).
    Equal magnitudes are ranked by `selection` (selection.py; None: the threshold rule).
    """
    if density >= 1:
        return
    if density <= 0:
        delta.zero_()
        return
    rows = delta if delta.dim() >= 2 else delta.unsqueeze(0)
    ranks = magnitude_ranks(rows, selection)
    n = rows.shape[1]
    # A one-entry row has no rank spread (mergekit: 0/0): it keeps with probability `density`.
    scaled = (ranks / (n - 1)).clamp(0, 1) if n > 1 else torch.full_like(ranks, 0.5)
    probabilities = (density - epsilon) + scaled * (2 * epsilon)
    keep = uniform_draws(generator, rows) < probabilities
    before = rows.abs().sum() if rescale else None
    rows.masked_fill_(~keep, 0.0)
    if before is not None:
        after = rows.abs().sum()
        if before >= 1e-7 and after >= 1e-7:
            rows.mul_(before / after)


def magnitude_ranks(rows: Tensor, selection: Selection | None) -> Tensor:
    """Each entry's rank 0..n-1 by |rows| along dimension 1 (DELLA), in the rows' dtype;
    equal magnitudes ranked by `selection` (None: the threshold rule)."""
    ranks = torch.empty_like(rows)
    keys = selection.keys(rows, as_float=False) if selection is not None else rows.abs()
    order = torch.argsort(keys, dim=1)
    del keys
    positions = torch.arange(rows.shape[1], dtype=rows.dtype, device=rows.device)
    ranks.scatter_(1, order, positions.view(1, -1, *([1] * (rows.dim() - 2))).expand_as(order))
    return ranks


def uniform_draws(
    source: torch.Generator | sparsify.RandomDraws | CounterDraws | None, like: Tensor
) -> Tensor:
    """U ~ [0, 1) shaped like `like`, from the merge's seeded draws or a torch.Generator."""
    if isinstance(source, sparsify.RandomDraws | CounterDraws):
        return source.uniform(like)
    return torch.rand(like.shape, generator=source, device=like.device, dtype=like.dtype)


def task_arithmetic(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier=None, consensus=False)


def ties(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier="magnitude", consensus=True)


def dare_ties(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier="random", consensus=True)


def dare_linear(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier="random", consensus=False)


def breadcrumbs(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier="outliers", consensus=False)


def breadcrumbs_ties(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier="outliers", consensus=True)


def della(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier="della", consensus=True)


def della_linear(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    return _task_arithmetic(tensors, base, args, sparsifier="della", consensus=False)


def sce(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """SCE (arXiv:2408.07990): Select the entries where the models vary most, Calculate
    per-model weights from the task vectors' mean squares, Erase minority signs, average.
    """
    if base is None:
        raise ValueError("sce needs a base tensor")
    deltas = torch.stack([x - base for x in tensors])  # (N, *shape)
    select = float(args.shared["select_topk"])
    if select < 1:
        deltas *= _top_variance_mask(deltas, select, args.selection)
    agree = sign_agreement(deltas)
    energy = deltas.square().reshape(len(tensors), -1).mean(dim=1)  # (N,)
    total = energy.sum().item()
    weights = energy / total if abs(total) >= 1e-6 else torch.full_like(energy, 1 / len(energy))
    weights = weights.view(-1, *([1] * base.dim())) * agree  # (N, *shape)
    mixed = (deltas * weights).sum(dim=0) / weights.sum(dim=0).clamp(min=1e-6)
    return base + mixed


def _top_variance_mask(deltas: Tensor, share: float, selection: Selection) -> Tensor:
    """The `share` of entries (of those with nonzero variance) where the models vary most;
    the mergekit rule takes mergekit's variance (of deltas in its dtype) and its topk."""
    if share <= 0:
        return torch.zeros_like(deltas[0])
    if selection.exact:
        narrow = deltas.to(selection.dtype) if selection.dtype is not None else deltas
        variance = torch.var(narrow, dim=0, unbiased=False)
        del narrow
        k = int(int(torch.count_nonzero(variance)) * share)
        return top_variance(variance, k).to(deltas.dtype)
    variance = torch.var(deltas, dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(variance)) * share)
    return sparsify.largest_mask(variance, k).to(deltas.dtype)


def ram(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """RAM (arXiv:2601.13572): entries changed (|tau| > epsilon) by one model are taken as
    they are; entries changed by several are averaged over the models that changed them.
    """
    return _ram(tensors, base, args, reinforce=False)


def ramplus_tl(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """RAM+ tensor-local: as ram, but a model's unique entries are scaled by
    1 + r clamp(shared / unique, 0, alpha), its counts of shared and unique entries.
    """
    return _ram(tensors, base, args, reinforce=True)


def _ram(
    tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs, reinforce: bool
) -> Tensor:
    if base is None:
        raise ValueError("ram needs a base tensor")
    epsilon = float(args.shared["epsilon"])
    deltas = torch.stack([x - base for x in tensors]).view(len(tensors), -1)  # (N, D)
    changed = deltas.abs() > epsilon
    counts = changed.sum(dim=0, keepdim=True)  # (1, D): models that changed each entry
    overlap, unique = counts > 1, counts == 1
    deltas = deltas * changed
    unique_part = deltas * unique
    if reinforce:
        shared_n = (changed & overlap).sum(dim=1)
        unique_n = (changed & unique).sum(dim=1)
        rho = shared_n / unique_n.clamp(min=epsilon)
        scale = 1 + float(args.shared["r"]) * rho.clamp(min=0, max=float(args.shared["alpha"]))
        unique_part = unique_part * scale.unsqueeze(-1)
    mixed = (unique_part + deltas * overlap / counts.clamp(min=1)).sum(dim=0, keepdim=True)
    return base + mixed.reshape_as(base)


def arcee_fusion(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """Arcee Fusion: keep the other model's changes whose importance is an upper outlier.

    importance = |x - base| * KL(softmax(x) || softmax(base)) per row (last dimension);
    kept where importance >= median + 1.5 IQR. Quantiles are exact: mergekit estimates them
    from a random sample of 1M entries on larger tensors.
    """
    if base is None:
        raise ValueError("arcee_fusion needs a base tensor")
    other = tensors[0]
    p = torch.softmax(other, dim=-1) + 1e-8
    q = torch.softmax(base, dim=-1) + 1e-8
    divergence = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    importance = (other - base).abs() * divergence
    flat = importance.reshape(-1)
    q1, median, q3 = (_lower_quantile(flat, q) for q in (0.25, 0.5, 0.75))
    keep = importance >= median + 1.5 * (q3 - q1)
    return base + (other - base) * keep


def _lower_quantile(values: Tensor, q: float) -> Tensor:
    """The element at sorted index floor(q (n - 1)) (mergekit's quantile rule)."""
    index = int(q * (values.numel() - 1))
    return torch.kthvalue(values, index + 1).values
