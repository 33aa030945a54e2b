"""Item response theory for fitness estimation: a 2PL fit, anchor items, and the gp-IRT estimate.

After tinyBenchmarks (Polo et al., 2024, "tinyBenchmarks: evaluating LLMs with fewer examples",
arXiv 2402.14992), section 3, and MERGE^3 (arXiv 2502.10436), which evolves merges on
estimates of this kind:

- 2PL model (their eq. 3.1, one ability dimension): P(Y_ij = 1) = sigmoid(a_j (theta_i - b_j))
  for candidate i and item j. Fitted by maximum a posteriori over (theta, a, b) on the
  calibration candidates' 0/1 correctness, with the priors theta ~ N(0, 1), b ~ N(0, B_SD^2),
  log a ~ N(0, log_a_sd^2) (py-irt's 2PL uses the same shapes; its variational fit is
  replaced by a MAP fit with L-BFGS, deterministic and a few milliseconds at this size).
  The 1PL (Rasch) model fixes every a_j = 1.
- calibration candidates that span a narrow band of ability (one generation of CMA-ES near
  its start) leave the discriminations free to grow and the 2PL curve steep: a candidate
  outside the band then gets an extreme p-IRT estimate. Three guards: the discrimination
  prior is tight (LOG_A_SD), the 1PL option has none to grow, and the gp-IRT mix shrinks to
  the anchors' weighted mean (which needs no model) as a candidate's ability leaves the
  calibration band (`shrunk_mix`).
- anchors: n equal strata of the items ordered by fitted difficulty b, one item drawn from
  each (seeded), weighted by its stratum's share. tinyBenchmarks' "IRT" anchors (their section
  3.2: k-means over the items' parameters, one anchor per cluster) were the first choice, but
  on the toy most items are answered by no calibration candidate (one generation near the
  start scores 2-30%): they share one parameter point, k-means gives that cluster one anchor
  with half the weight, and the anchor estimate's error tripled (scripts/estimator_quality.py).
- estimate (their eqs. 3.3-3.5): an ability theta_hat fitted to the anchors alone; p-IRT
  Z_p = (1/N)(sum over anchors of Y_j + sum over the rest of P_j(theta_hat)); the anchor
  estimate Z_a = sum_j w_j Y_j; gp-IRT Z = lam Z_a + (1 - lam) Z_p, lam chosen on held-out
  calibration candidates: a fit on the weaker half scored on the stronger half and the
  reverse, so lam prices the extrapolation that later, better candidates need.

Everything here is a pure function of arrays and a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

B_SD = 3.0  # item difficulty prior: wide; the calibration pins most items down
# Discrimination prior: a within about [0.25, 4] at two sigma. The former 1.0 (a up to 7.4)
# let a narrow calibration band fit near-step item curves (see the module docstring); 0.5
# cost accuracy where the calibration is wide (tests/evaluate/test_estimator.py simulations).
LOG_A_SD = 0.7
MODELS = ("2pl", "1pl")
# Ability units (the prior's sd) outside the calibration band over which gp-IRT's mix moves
# all the way to the anchor mean: the item curves are only known where candidates were seen.
SHRINK_WIDTH = 1.0
FIT_STEPS = 100  # L-BFGS iterations: on 30 x 700 the item parameters move < 0.01 after 100
MIX_GRID = np.linspace(0.0, 1.0, 21)  # the lam values tried for gp-IRT


@dataclass(frozen=True)
class ItemModel:
    """Fitted item parameters (one entry per item) and the anchors chosen from them."""

    a: np.ndarray  # (N,) discrimination
    b: np.ndarray  # (N,) difficulty
    anchors: np.ndarray  # (n,) item indices
    weights: np.ndarray  # (n,) anchor weights, summing to 1
    mix: float  # gp-IRT's lam: the anchor estimate's share
    band: tuple[float, float] = (-np.inf, np.inf)  # calibration candidates' abilities

    def some_anchors(self, keep: np.ndarray) -> ItemModel:
        """The model over the anchors `keep` marks (a raced candidate stopped early)."""
        w = self.weights[keep]
        w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / max(len(w), 1))
        return ItemModel(self.a, self.b, self.anchors[keep], w, self.mix, self.band)

    def to_json(self) -> dict[str, object]:
        return {
            "a": [round(float(v), 6) for v in self.a],
            "b": [round(float(v), 6) for v in self.b],
            "anchors": [int(v) for v in self.anchors],
            "weights": [round(float(v), 8) for v in self.weights],
            "mix": float(self.mix),
            "band": [float(v) for v in self.band],
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> ItemModel:
        return cls(
            a=np.asarray(d["a"], dtype=np.float64),
            b=np.asarray(d["b"], dtype=np.float64),
            anchors=np.asarray(d["anchors"], dtype=np.int64),
            weights=np.asarray(d["weights"], dtype=np.float64),
            mix=float(d["mix"]),  # type: ignore[arg-type]
            band=_band(d.get("band")),
        )


def _band(value: object) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return (-np.inf, np.inf)  # a plan from before the band was stored: no shrinking
    return (float(value[0]), float(value[1]))


def fit_2pl(
    y: np.ndarray, model: str = "2pl", log_a_sd: float = LOG_A_SD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MAP fit of the 2PL (or 1PL: a = 1) model to a (candidates, items) 0/1 matrix; returns
    (theta, a, b)."""
    y_t = torch.as_tensor(y, dtype=torch.float64)
    k, n = y_t.shape
    # start: b from each item's logit of its share correct, theta from each candidate's
    p_item = (y_t.mean(0) * k + 0.5) / (k + 1)
    p_cand = (y_t.mean(1) * n + 0.5) / (n + 1)
    theta = torch.logit(p_cand).clone().requires_grad_(True)
    b = (-torch.logit(p_item)).clone().requires_grad_(True)
    log_a = torch.zeros(n, dtype=torch.float64, requires_grad=model == "2pl")
    free = [theta, b, log_a] if model == "2pl" else [theta, b]
    opt = torch.optim.LBFGS(
        free, max_iter=FIT_STEPS, line_search_fn="strong_wolfe", tolerance_grad=1e-6
    )

    def loss() -> torch.Tensor:
        opt.zero_grad()
        logits = log_a.exp() * (theta[:, None] - b[None, :])  # (K, N)
        nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_t, reduction="sum")
        prior = (theta**2).sum() / 2 + (b**2).sum() / (2 * B_SD**2)
        prior = prior + (log_a**2).sum() / (2 * log_a_sd**2)
        total = nll + prior
        total.backward()
        return total

    opt.step(loss)
    return theta.detach().numpy(), log_a.detach().exp().numpy(), b.detach().numpy()


def ability(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """MAP ability of one candidate from its 0/1 answers `y` to items (a, b); prior N(0, 1).

    Newton's method on the concave log posterior (tinyBenchmarks eq. 3.4)."""
    theta = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-a * (theta - b)))
        grad = float(np.sum(a * (y - p))) - theta
        hess = -float(np.sum(a**2 * p * (1 - p))) - 1.0
        step = grad / hess
        theta -= step
        if abs(step) < 1e-10:
            break
    return theta


def strata_anchors(b: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n anchor items: the items ordered by difficulty `b` (ties in a seeded random order) are
    cut into n strata of equal size; one item is drawn from each, weighted by its stratum's
    share of the items."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(b)), b))
    strata = np.array_split(order, min(n, len(b)))
    anchors = np.array([s[rng.integers(len(s))] for s in strata], dtype=np.int64)
    weights = np.array([len(s) for s in strata], dtype=np.float64) / len(b)
    return anchors, weights


def estimates(
    y_anchor: np.ndarray, a: np.ndarray, b: np.ndarray, anchors: np.ndarray, weights: np.ndarray
) -> tuple[float, float, float]:
    """(anchor estimate Z_a, p-IRT estimate Z_p, ability) of one candidate."""
    theta = ability(y_anchor, a[anchors], b[anchors])
    p = 1 / (1 + np.exp(-a * (theta - b)))
    rest = np.ones(len(a), dtype=bool)
    rest[anchors] = False
    z_p = (float(np.sum(y_anchor)) + float(np.sum(p[rest]))) / len(a)
    return float(np.dot(weights, y_anchor)), z_p, theta


def shrunk_mix(mix: float, theta: float, band: tuple[float, float]) -> float:
    """gp-IRT's mix for a candidate of ability `theta`: `mix` inside the calibration band,
    moving linearly to 1 (the anchor mean alone) over SHRINK_WIDTH outside it."""
    outside = max(0.0, band[0] - theta, theta - band[1])
    return mix + (1.0 - mix) * min(1.0, outside / SHRINK_WIDTH)


def estimate(model: ItemModel, y_anchor: np.ndarray) -> float:
    """gp-IRT estimate of the full-split mean from the answers to the anchors."""
    z_a, z_p, theta = estimates(y_anchor, model.a, model.b, model.anchors, model.weights)
    lam = shrunk_mix(model.mix, theta, model.band)
    return lam * z_a + (1 - lam) * z_p


def fit_item_model(
    y: np.ndarray, n: int, seed: int, model: str = "2pl", log_a_sd: float = LOG_A_SD
) -> ItemModel:
    """Fit the item model to the calibration matrix, pick n anchors, and choose gp-IRT's mix
    on held-out calibration rows (see choose_mix)."""
    y = np.asarray(y, dtype=np.float64)
    theta, a, b = fit_2pl(y, model, log_a_sd)
    anchors, weights = strata_anchors(b, n, seed)
    band = (float(theta.min()), float(theta.max()))
    mix = choose_mix(y, n, seed, model, log_a_sd)
    return ItemModel(a, b, anchors, weights, mix, band)


def choose_mix(
    y: np.ndarray, n: int, seed: int, model: str = "2pl", log_a_sd: float = LOG_A_SD
) -> float:
    """gp-IRT's lam minimizing the squared error on held-out calibration rows: a fit on the
    weaker half of the candidates (by share correct) scores the stronger half, and the
    reverse. A random split would hold out candidates like the fitted ones, where p-IRT
    looks better than it is for the better candidates a search goes on to find."""
    k = len(y)
    if k < 4:  # too few candidates to hold any out: weigh both estimates equally
        return 0.5
    order = np.argsort(y.mean(1), kind="stable")
    halves = (order[: k // 2], order[k // 2 :])
    errors = np.zeros(len(MIX_GRID))
    for fit_rows, test_rows in (halves, halves[::-1]):
        _, a, b = fit_2pl(y[fit_rows], model, log_a_sd)
        anchors, weights = strata_anchors(b, n, seed)
        for row in y[test_rows]:
            z_a, z_p, _ = estimates(row[anchors], a, b, anchors, weights)
            errors += (MIX_GRID * z_a + (1 - MIX_GRID) * z_p - row.mean()) ** 2
    return float(MIX_GRID[int(np.argmin(errors))])
