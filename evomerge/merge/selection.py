"""Which entries a selection by magnitude, rank or variance keeps among equal keys: `tie_rule`.

mergekit 0.1.5 keeps the first k of `torch.argsort(|delta|, descending=True)` (TIES' trim),
positions [n_bottom, n_bottom + k) of `torch.sort(|delta|)` (breadcrumbs), ranks each row by
`torch.argsort(|delta|, dim=1)` (DELLA) and keeps `torch.topk` of the entries' variance (SCE),
with delta in the dtype it merges in (the recipe's `dtype`, else the checkpoints'), and |delta|
as float32 on CPU for TIES and breadcrumbs. torch's CPU sort is not stable and follows no
simple index rule among equal keys, so keeping mergekit's entries takes that very sort of the
same keys, and bfloat16 deltas tie a lot (one SmolLM2-135M k_proj: 110,592 deltas, 1,122
distinct magnitudes).

- `mergekit` (a recipe without the key): those sorts of those keys. A sort is needed only when
  equal keys straddle the cut; otherwise the kept set is the one a threshold finds (a radix
  select, sparsify.kth_largest_ties), and that is what runs.
- `threshold`: the keys are the deltas evomerge merges in (float32 for narrower checkpoints);
  at the cut the first entries in index order are kept, DELLA ranks by argsort of those
  deltas. It never sorts a whole tensor: the search names it in the recipes it writes, and a
  recipe with `drop_scheme: counter` and no `tie_rule` (written by the search before the key)
  keeps it, so it merges to the bytes it merged to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evomerge.merge import sparsify

Tensor = torch.Tensor

MERGEKIT, THRESHOLD = "mergekit", "threshold"  # recipe.TIE_RULES
# What the search writes into its recipes: no whole-tensor sort per candidate.
SEARCH_TIE_RULE = THRESHOLD
# Methods whose output depends on the tie rule (they select by magnitude, rank or variance).
TIE_RULE_METHODS = frozenset(
    {"ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce"}
)


def search_tie_rule(method: str) -> str | None:
    """The `tie_rule` a recipe written by the search names (None: the method has no ties)."""
    return SEARCH_TIE_RULE if method in TIE_RULE_METHODS else None


def recipe_tie_rule(tie_rule: str | None, drop_scheme: str | None) -> str:
    """A recipe's rule: its `tie_rule`; without one, `threshold` for a recipe of the counter
    drop scheme (the search's recipes from before the key) and `mergekit` for any other."""
    if tie_rule is not None:
        return tie_rule
    return THRESHOLD if drop_scheme == "counter" else MERGEKIT


@dataclass(frozen=True)
class Selection:
    """How one output tensor's selections break ties.

    `dtype`: the dtype mergekit computes the task vectors in, where it is narrower than the
    compute dtype (the mergekit rule sorts deltas rounded to it); None: the compute dtype.
    """

    rule: str = MERGEKIT
    dtype: torch.dtype | None = None

    @property
    def exact(self) -> bool:
        return self.rule == MERGEKIT

    def keys(self, delta: Tensor, *, as_float: bool) -> Tensor:
        """|delta| as the rule sorts it (`as_float`: float32 on CPU, as TIES and breadcrumbs)."""
        if not self.exact:
            return delta.abs()
        magnitudes = (delta.to(self.dtype) if self.dtype is not None else delta).abs()
        return magnitudes.float() if as_float and magnitudes.device.type == "cpu" else magnitudes

    def largest_of(self, delta: Tensor, k: int) -> Tensor:
        """Bool mask of the k entries TIES keeps (mergekit: `largest` of its keys)."""
        return largest(self.keys(delta, as_float=True), k)

    def middle_of(self, delta: Tensor, bottom: int, count: int) -> Tensor:
        """Bool mask of the entries breadcrumbs keeps (mergekit: `middle` of its keys)."""
        return middle(self.keys(delta, as_float=True), bottom, count)


def unique_cut(keys: Tensor, k: int) -> Tensor | None:
    """The k-th largest key where the k largest keys are one set whatever breaks ties (every
    key equal to it is among them), else None. Keys are non-negative; 0 < k < numel."""
    if keys.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return None  # float64: no radix select on 64-bit patterns; the caller sorts
    threshold, tied, equal = sparsify.kth_largest_ties(keys.float(), k)
    return threshold if tied == equal else None


def largest(keys: Tensor, k: int) -> Tensor:
    """Bool mask of mergekit's k largest keys: the first k of argsort(keys, descending)."""
    n = keys.numel()
    if k <= 0 or k >= n:
        return torch.full_like(keys, k > 0, dtype=torch.bool)
    threshold = unique_cut(keys, k)
    if threshold is not None:
        return keys >= threshold.to(keys.dtype)
    flat = keys.reshape(-1)
    mask = torch.zeros(n, dtype=torch.bool, device=keys.device)
    mask[torch.argsort(flat, descending=True)[:k]] = True
    return mask.view(keys.shape)


def middle(keys: Tensor, bottom: int, count: int) -> Tensor:
    """Bool mask of positions [bottom, bottom + count) of torch.sort(keys) (breadcrumbs)."""
    n = keys.numel()
    if count <= 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    above, top = n - bottom, n - bottom - count  # keep the `above` largest but the `top` largest
    cuts = [unique_cut(keys, c) if 0 < c < n else None for c in (above, top)]
    if all(cut is not None or not 0 < c < n for cut, c in zip(cuts, (above, top), strict=True)):
        return largest(keys, above) & ~largest(keys, top)
    indices = torch.sort(keys.reshape(-1), descending=False).indices[bottom : bottom + count]
    mask = torch.zeros(n, dtype=torch.bool, device=keys.device)
    mask[indices] = True
    return mask.view(keys.shape)


def top_variance(variance: Tensor, k: int) -> Tensor:
    """Bool mask of mergekit's SCE selection: torch.topk(|variance|, k)."""
    n = variance.numel()
    if k <= 0 or k >= n:
        return torch.full_like(variance, k > 0, dtype=torch.bool)
    keys = variance.abs()
    threshold = unique_cut(keys, k)
    if threshold is not None:
        return keys >= threshold.to(keys.dtype)
    mask = torch.zeros(n, dtype=torch.bool, device=variance.device)
    mask[torch.topk(keys.reshape(-1), k=k, largest=True).indices] = True
    return mask.view(variance.shape)
