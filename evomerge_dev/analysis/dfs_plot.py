"""A picture of a data-flow path: which source layer runs at each step, and its input scale."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from evomerge.errors import RecipeError
from evomerge.merge.path import PathStep, recipe_path
from evomerge.recipe import Recipe


def plot_path(recipe: Recipe, names: Mapping[str, str], path: Path, title: str) -> None:
    """Path position (x) against source layer (y, one band per model, in `names` order);
    each step is labelled with the scale of the hidden state entering it.

    names: model reference -> short name (e.g. the run's models.sources names).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = recipe_path(recipe)
    if not steps:
        raise RecipeError("plot_path: the recipe is not a passthrough layer path")
    order = list(dict.fromkeys([*names, *(s.model for s in steps)]))
    depth = {m: 1 + max(s.layer for s in steps if s.model == m) for m in order if _used(m, steps)}
    offset, base = {}, 0
    for m in order:
        offset[m] = base
        base += depth.get(m, 0) + 1
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(steps) + 2), 0.35 * base + 2))
    colors = plt.get_cmap("tab10")
    xs = list(range(len(steps)))
    ys = [offset[s.model] + s.layer for s in steps]
    ax.plot(xs, ys, color="0.7", zorder=1)
    for k, m in enumerate(order):
        pts = [(x, y) for x, y, s in zip(xs, ys, steps, strict=True) if s.model == m]
        if pts:
            label = names.get(m, Path(m).name)
            px, py = zip(*pts, strict=True)
            ax.scatter(px, py, s=80, color=colors(k), label=label, zorder=2)
    for x, y, s in zip(xs, ys, steps, strict=True):
        if s.input_scale != 1.0:
            ax.annotate(f"{s.input_scale:.2f}", (x, y), textcoords="offset points", xytext=(0, 8),
                        ha="center", fontsize=7)  # fmt: skip
    ticks = [
        (offset[m] + i, f"{names.get(m, Path(m).name)}.{i}") for m in depth for i in range(depth[m])
    ]
    ax.set_yticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=8)
    ax.set_xticks(xs)
    ax.set_xlabel("position on the path (numbers: scale of the incoming hidden state)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _used(model: str, steps: tuple[PathStep, ...]) -> bool:
    return any(s.model == model for s in steps)
