"""TIES sign election without normalization (the search's path) equals masking by agreement."""

import torch

from evomerge.merge.methods.base import MergeArgs
from evomerge.merge.methods.task_vectors import sign_agreement, ties


def test_unnormalized_ties_sums_exactly_the_agreeing_entries():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 48, generator=gen)
    models = [base + torch.randn(64, 48, generator=gen) for _ in range(3)]
    models[2][:4] = base[:4]  # zero deltas never agree
    weights = [1.5, 0.25, 0.75]
    args = MergeArgs(
        per_model={"weight": weights, "density": [1.0] * 3},
        shared={"normalize": False, "rescale": False, "lambda": 1.0, "int8_mask": False},
    )
    deltas = torch.stack([w * (m - base) for w, m in zip(weights, models, strict=True)])
    expected = base + deltas.masked_fill(~sign_agreement(deltas), 0.0).sum(dim=0)
    torch.testing.assert_close(ties(models, base, args), expected, rtol=0, atol=1e-6)


def test_normalized_ties_divides_by_the_agreeing_weights():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(64, 48, generator=gen)
    models = [base + torch.randn(64, 48, generator=gen) for _ in range(3)]
    models[1][:4] = base[:4]  # zero deltas never agree
    models[2][:2] = base[:2]
    models[0][:1] = base[:1]  # row 0: no model agrees: divisor 1
    weights = [1.5, -0.25, 0.75]
    args = MergeArgs(
        per_model={"weight": weights, "density": [1.0] * 3},
        shared={"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False},
    )
    deltas = torch.stack([w * (m - base) for w, m in zip(weights, models, strict=True)])
    agree = sign_agreement(deltas)
    divisor = sum(w * a.float() for w, a in zip(weights, agree, strict=True))
    divisor[divisor == 0] = 1
    expected = base + deltas.masked_fill(~agree, 0.0).sum(dim=0) / divisor
    assert torch.equal(ties(models, base, args), expected)
