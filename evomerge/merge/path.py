"""A passthrough recipe run in memory as a layer path over live source models (no weight copies).

The data-flow search evaluates many layer paths over the same few source models. Merging each
path into a checkpoint would copy every layer; instead one live "path model" (a causal LM shell
of the sources' architecture) gets, per candidate, a layer list whose entries are references to
the loaded source layers, run under its path position, so the KV cache keeps one slot per
position even when a layer is used twice.

Data-flow scales (a slice's `input_scale`) multiply the hidden state entering a layer. With
pre-norm layers that equals dividing the outputs of the residual writers (`o_proj`, `down_proj`)
of that layer and every later one by the running product C_p of the scales, up to the norms'
epsilon. The path model applies them in that folded form by default (`fold=True`), which is
exactly what the exported checkpoint computes (merge/plan.py folds them into the weights), so the
searched candidate and the exported one agree to float rounding; `fold=False` scales the hidden
state literally (the two differ by the epsilon effect, ~1e-4 in logits on the small toy).

Embeddings come from the first path layer's model, the final norm and head from the last one's,
as the merge core (and mergekit) lay out a passthrough of slices. The exported checkpoint folds
the scales into weights (merge/plan.py) and gives the same logits up to the norms' epsilon.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from evomerge.errors import MergeError, preview
from evomerge.merge.architecture import COMPATIBILITY_KEYS, RESIDUAL_WRITERS
from evomerge.recipe import Recipe


@dataclass(frozen=True)
class PathStep:
    """One decoder layer of the path: which model and layer, and the scale of its input."""

    model: str
    layer: int
    input_scale: float = 1.0


def recipe_path(recipe: Recipe) -> tuple[PathStep, ...] | None:
    """The layer path of a passthrough recipe of slices, or None when the recipe needs tensor
    math (another method, per-tensor `scale` parameters, or `models` instead of slices)."""
    if recipe.merge_method != "passthrough" or not recipe.slices or recipe.parameters:
        return None
    steps = []
    for s in recipe.slices:
        if s.parameters or any(src.parameters for src in s.sources):
            return None
        src = s.sources[0]
        for k, layer in enumerate(range(*src.layer_range)):
            scale = s.input_scale if k == 0 and s.input_scale is not None else 1.0
            steps.append(PathStep(src.model, layer, scale))
    return tuple(steps)


class _PathLayer(nn.Module):
    """A reference to a source decoder layer at one path position.

    scale multiplies the incoming hidden state; writer_factor multiplies the residual writers'
    outputs (1 / C_p in folded form). One of the two is 1.
    """

    def __init__(self, layer: nn.Module, position: int, scale: float, writer_factor: float):
        super().__init__()
        self.layer = layer
        self.position = position
        self.scale = scale
        self.writer_factor = writer_factor

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.scale != 1.0:
            hidden_states = hidden_states * self.scale
        # The KV cache is indexed by layer_idx; a layer used twice needs a slot per use.
        layer: Any = self.layer
        layer.self_attn.layer_idx = self.position
        layer.path_writer_factor = self.writer_factor  # read by the writers' hooks
        try:
            return layer(hidden_states, *args, **kwargs)
        finally:
            layer.path_writer_factor = 1.0


def _install_writer_hooks(layer: nn.Module) -> None:
    """Once per source layer: scale o_proj / down_proj outputs by the layer's current factor."""
    if hasattr(layer, "path_writer_factor"):
        return
    state: Any = layer
    state.path_writer_factor = 1.0

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        factor = float(state.path_writer_factor)
        return None if factor == 1.0 else output * factor

    for name, module in layer.named_modules():
        if name in RESIDUAL_WRITERS:
            module.register_forward_hook(hook)


class _Head(nn.Module):
    """A stable output module (hooks attach here) that runs the current path's head."""

    def __init__(self) -> None:
        super().__init__()
        self.target: nn.Module | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.target is None:
            raise MergeError("the path model has no path yet; call set_path first")
        return self.target(hidden_states)


Loader = Callable[[str], nn.Module]


class PathModel:
    """One live causal LM whose decoder layers are a path over source models loaded once.

    `loader(ref)` loads a source (a transformers causal LM); models in `preloaded` (by reference)
    are used as they are. `model` is the module to evaluate; `set_path` swaps its layer list.
    """

    def __init__(
        self,
        loader: Loader,
        preloaded: Mapping[str, nn.Module] | None = None,
        *,
        fold: bool = True,
    ) -> None:
        self._loader = loader
        self.fold = fold
        self.sources: dict[str, Any] = dict(preloaded or {})
        self._shell: Any = None

    @property
    def model(self) -> nn.Module:
        if self._shell is None:
            raise MergeError("the path model has no path yet; call set_path first")
        return self._shell

    def source(self, ref: str) -> Any:
        if ref not in self.sources:
            loaded = self._loader(ref)
            if self.sources:
                _check_compatible(next(iter(self.sources.items())), (ref, loaded))
            self.sources[ref] = loaded
        return self.sources[ref]

    def set_path(self, steps: Sequence[PathStep]) -> None:
        """Make `model` run `steps`: references only, no weight copies."""
        if not steps:
            raise MergeError("empty path: a data-flow candidate needs at least one layer")
        first, last = self.source(steps[0].model), self.source(steps[-1].model)
        if self._shell is None:
            self._shell = _make_shell(first)
        layers, product = [], 1.0  # product: C_p, the running product of the scales
        for position, step in enumerate(steps):
            src = self.source(step.model)
            count = len(src.model.layers)
            if not 0 <= step.layer < count:
                raise MergeError(
                    f"model {preview(step.model)} has {count} layers, got layer {step.layer}"
                )
            layer = src.model.layers[step.layer]
            product *= step.input_scale
            if self.fold:
                _install_writer_hooks(layer)
                layers.append(_PathLayer(layer, position, 1.0, 1.0 / product))
            else:
                layers.append(_PathLayer(layer, position, step.input_scale, 1.0))
        shell = self._shell
        shell.model.layers = nn.ModuleList(layers)
        shell.config.num_hidden_layers = len(steps)
        if isinstance(getattr(shell.config, "layer_types", None), list):
            shell.config.layer_types = [
                self.source(s.model).config.layer_types[s.layer] for s in steps
            ]
        shell.model.embed_tokens = first.model.embed_tokens
        shell.model.norm = last.model.norm
        shell.lm_head.target = last.lm_head


def _make_shell(template: Any) -> Any:
    """A model of the template's class with no weights of its own (built on the meta device);
    every module that holds weights is replaced by a reference before it runs."""
    config = copy.deepcopy(template.config)
    with torch.device("meta"):
        shell = type(template)(config)
    shell.model.rotary_emb = template.model.rotary_emb
    shell.lm_head = _Head()
    shell.generation_config = copy.deepcopy(template.generation_config)
    shell.config.tie_word_embeddings = False  # the head is a reference, never re-tied
    return shell.eval()


def _check_compatible(a: tuple[str, Any], b: tuple[str, Any]) -> None:
    """Layers hand hidden states to each other: the shape-fixing config keys must agree."""
    (ref_a, model_a), (ref_b, model_b) = a, b
    for key in COMPATIBILITY_KEYS:
        va, vb = getattr(model_a.config, key, None), getattr(model_b.config, key, None)
        if va != vb:
            raise MergeError(
                f"incompatible sources for a layer path: {key} is {preview(va)} in {preview(ref_a)} "
                f"but {preview(vb)} in {preview(ref_b)}"
            )
