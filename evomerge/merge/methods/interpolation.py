"""Methods that interpolate between models: linear and spherical means, swaps, pass-through.

Definitions follow mergekit 0.1.5 (same YAML names, parameters and defaults, and the same
operation order so float32 results agree); the deliberate differences are listed in the README.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from evomerge.merge.methods.base import MergeArgs, Tensor


def linear(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """Weighted average, sum(w_i x_i) / sum(w_i) with `normalize` (arXiv:2203.05482)."""
    weights = torch.tensor(args.per_model["weight"], dtype=tensors[0].dtype)
    out = torch.zeros_like(tensors[0])
    for x, w in zip(tensors, weights.to(out.device), strict=True):
        out.addcmul_(x, w)
    total = float(weights.sum())
    # mergekit divides by a zero sum too (inf/NaN out); we leave the sum unnormalized instead.
    if args.shared["normalize"] and abs(total) >= 1e-8:
        out.div_(total)
    return out


def slerp(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """Spherical interpolation from the base (t=0) to the other model (t=1), whole tensor.

    Angles come from the normalized flattened tensors; nearly collinear pairs fall back to
    linear interpolation, as in mergekit. Inputs may be narrower than float32 (the registry's
    `converts_inputs`): row blocks are converted as they are used, so no whole-tensor float32
    copy exists besides the result.
    """
    if base is None:
        raise ValueError("slerp needs a base tensor")
    v0, v1 = base, tensors[0]
    compute = torch.promote_types(torch.promote_types(v0.dtype, v1.dtype), torch.float32)
    t = float(args.shared["t"])
    # |a|^2, |b|^2 and <a, b> from row blocks, each block's dot products in float64 too: a
    # float32 dot of a million entries (BLAS accumulates them one by one) is off by up to ~1e-3
    # relative, enough to move a near-collinear pair across the lerp threshold. mergekit's
    # float32 norms and dot use pairwise sums; both agree with the exact value to ~1e-7.
    aa = bb = ab = 0.0
    for x, y in zip(_blocks(v0, torch.float64), _blocks(v1, torch.float64), strict=True):
        aa += float(torch.dot(x, x))
        bb += float(torch.dot(y, y))
        ab += float(torch.dot(x, y))
    norm_a = math.sqrt(aa) if math.sqrt(aa) > 1e-8 else 1.0
    norm_b = math.sqrt(bb) if math.sqrt(bb) > 1e-8 else 1.0
    dot = min(max(ab / (norm_a * norm_b), -1.0), 1.0)
    if abs(dot) > 0.9995:
        return _mix(1 - t, v0, t, v1, compute)
    theta = torch.acos(torch.tensor(dot, dtype=torch.float64))
    sin_theta = torch.sin(theta)
    coef_0 = float(torch.sin((1 - t) * theta) / sin_theta)
    coef_1 = float(torch.sin(t * theta) / sin_theta)
    return _mix(coef_0, v0, coef_1, v1, compute)


BLOCK = 1 << 20  # entries per block of the whole-tensor interpolations: 4 MB of float32


def _blocks(v: Tensor, compute: torch.dtype) -> Iterator[Tensor]:
    """v flattened, one row block at a time, in the compute dtype."""
    for block in v.reshape(-1).split(BLOCK):
        yield block.to(compute)


def _mix(c0: float, v0: Tensor, c1: float, v1: Tensor, compute: torch.dtype) -> Tensor:
    """c0 v0 + c1 v1 in `compute` (each product rounded, then the sum), one row block at a
    time: the temporaries stay in cache instead of being whole tensors."""
    out = torch.empty(v0.shape, dtype=compute, device=v0.device)
    blocks = zip(out.view(-1).split(BLOCK), _blocks(v0, compute), _blocks(v1, compute), strict=True)
    for block, x0, x1 in blocks:
        torch.mul(x0, c0, out=block)
        block.add_(x1 * c1)
    return out


def nuslerp(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """Slerp between two models at t = w_1 / (w_0 + w_1), of task vectors when a base is given.

    `nuslerp_flatten` (default) takes one angle for the whole tensor; otherwise one per row of
    the last dimension, or with `nuslerp_row_wise` one per column (dimension 0).
    """
    weights = args.per_model["weight"]
    total = float(weights[0]) + float(weights[1])
    t = 0.5 if abs(total) < 1e-6 else float(weights[1]) / total
    v0, v1 = tensors
    if base is not None:
        v0, v1 = v0 - base, v1 - base
    dim = 0 if args.shared["nuslerp_row_wise"] else -1
    out = _slerp_along(t, v0, v1, dim=dim, flatten=bool(args.shared["nuslerp_flatten"]))
    return out if base is None else base + out


def _slerp_along(t: float, v0: Tensor, v1: Tensor, *, dim: int, flatten: bool) -> Tensor:
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)  # one angle per row
    colinear = (1 - cos.square()) <= 1e-16
    theta = torch.acos(torch.where(colinear, 0, cos))
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * v0 + t * v1, spherical)
    if dim != -1 and not flatten:
        out = out.transpose(dim, -1)
    return out.reshape(shape)


def multislerp(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """Barycentric interpolation on the hypersphere (Goddard, "Multi-SLERP").

    Unit vectors (of task vectors when a base is given) are averaged with the weights, the
    average's direction is the tangent point, the weighted tangent vectors are mapped back with
    the exponential map, and the result takes the weighted mean norm.
    """
    if len(tensors) == 1:
        return tensors[0]
    eps = float(args.shared["eps"])
    stacked = torch.stack(list(tensors))  # (N, *shape)
    if base is not None:
        stacked -= base
    flat = stacked.view(stacked.shape[0], -1)  # (N, D)
    weights = torch.tensor(args.per_model["weight"], dtype=flat.dtype, device=flat.device)
    if args.shared["normalize_weights"]:
        weights = weights / weights.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)  # (N, 1)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        # No direction to interpolate around (all task vectors zero, or antipodal ones that
        # balance): the weighted linear combination, as mergekit does for two inputs.
        out = (stacked * weights.view(-1, *([1] * (stacked.dim() - 1)))).sum(0)
        return out if base is None else out + base
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * weights.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent) + eps
    out = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    out = (out * (norms.squeeze(-1) * weights).sum()).view(stacked.shape[1:])
    return out if base is None else out + base


def karcher(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """Equal-weight Karcher (Riemannian) mean of the directions, times the mean norm.

    Fixed-point iteration on the unit sphere (at most `max_iter` steps, stopping when the
    tangent step is below `tol`), as in mergekit's karcher (arXiv:2603.04972).
    """
    if len(tensors) == 1:
        return tensors[0]
    tol = float(args.shared["tol"])
    alphas = [1.0 / len(tensors)] * len(tensors)
    norms = [torch.linalg.vector_norm(x) for x in tensors]
    units = [
        torch.zeros_like(x) if n.item() == 0 else x / n for x, n in zip(tensors, norms, strict=True)
    ]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    alpha_sum = sum(alphas[i] for i in valid)
    weights = [alphas[i] / alpha_sum for i in valid]
    points = [units[i] for i in valid]
    mean = torch.zeros_like(points[0])
    for w, u in zip(weights, points, strict=True):
        mean += w * u
    mean_norm = torch.linalg.vector_norm(mean)
    mean = points[0].clone() if mean_norm.item() < tol else mean / mean_norm
    for _ in range(int(args.shared["max_iter"])):
        tangent = torch.zeros_like(mean)  # weighted log map of the points at `mean`
        for w, u in zip(weights, points, strict=True):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += w * (theta / torch.sin(theta)) * (u - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent)
        if tangent_norm.item() < tol:
            break
        mean = torch.cos(tangent_norm) * mean + torch.sin(tangent_norm) * (tangent / tangent_norm)
        unit_norm = torch.linalg.vector_norm(mean)
        if unit_norm.item() > tol:
            mean = mean / unit_norm
    scale = sum((a * n for a, n in zip(alphas, norms, strict=True)), torch.zeros(()))
    return scale.to(mean.device) * mean


def nearswap(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """Take the other model's value where it is within `t` of the base's, blend beyond that.

    Per entry, w = clamp(t / |base - x|, 0, 1) and the result is w x + (1 - w) base.
    """
    if base is None:
        raise ValueError("nearswap needs a base tensor")
    other = tensors[0]
    weight = (float(args.shared["t"]) / (base - other).abs().clamp(min=1e-6)).clamp(0, 1)
    return weight * other + (1 - weight) * base


def passthrough(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """The single input, times its `scale` when one is given (data-flow merges)."""
    scale = args.per_model["scale"][0]
    return tensors[0] if scale is None else tensors[0] * scale


def model_stock(tensors: Sequence[Tensor], base: Tensor | None, args: MergeArgs) -> Tensor:
    """Model Stock (arXiv:2403.19522, eq. 2): t = N cos / (1 + (N-1) cos), w = t avg + (1-t) w0."""
    if base is None:
        raise ValueError("model_stock needs a base tensor")
    shape = base.shape
    if args.shared["filter_wise"]:  # one angle per output row
        w0 = base if base.dim() > 1 else base.unsqueeze(0)
        ws = [x if x.dim() > 1 else x.unsqueeze(0) for x in tensors]
    else:
        w0, ws = base.reshape(-1), [x.reshape(-1) for x in tensors]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, u in enumerate(offsets):
        for v in offsets[i + 1 :]:
            norms = torch.linalg.vector_norm(u, dim=-1) * torch.linalg.vector_norm(v, dim=-1)
            cosines.append(((u * v).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    # At the singularity (opposed updates) keep the base rather than amplify them.
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denominator))
    average = torch.stack(ws).sum(dim=0) / n
    return (t * average + (1 - t) * w0).reshape(shape)
