"""Multi-stage recipes, in mergekit-multi's format: several YAML documents in one file.

Each document is a recipe with a `name`; a later recipe uses an earlier result by naming it
where a model goes (`model:`, `base_model:`, `tokenizer_source:`). Stages run in dependency
order (file order among independent ones). The final result is the unnamed document if there
is one (at most one), else the last stage; the others are intermediates, written to a
temporary directory beside OUT_DIR and removed at the end unless `keep` names a directory
for them (`<keep>/<name>`, each new; a run that fails removes the ones it kept, so the same
command can run again). This is how a PS+DFS result exports as one file: the PS merge,
then the layer path over it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evomerge.errors import MergeError, RecipeError, preview
from evomerge.merge.card import render_card
from evomerge.merge.confine import ModelRoot
from evomerge.merge.execute import MergeOptions, merge_to_disk
from evomerge.merge.io import resolve_model_dir
from evomerge.merge.lora import split_adapter
from evomerge.merge.out_dir import Staging, check_out_dir, make_parents, remove_made
from evomerge.merge.recipe_checks import check_recipe
from evomerge.merge.vocabulary import TOKENIZER_FILES, tokenizer_spec
from evomerge.recipe import Recipe, dump_recipe, parse_recipe
from evomerge.yaml_limits import load_yaml, read_source

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The most stages one recipe file may hold: mergekit-multi recipes have a handful, and each stage
# writes a whole model to disk; the dependency walk recurses once per stage of a chain.
MAX_STAGES = 100
SOURCES = ("union", "base")  # tokenizer sources that name no model


@dataclass(frozen=True)
class Stage:
    name: str | None  # None: the unnamed final document
    recipe: Recipe  # references to other stages are still their names


def load_stages(source: str | Path) -> tuple[Stage, ...]:
    """Parse every YAML document of a recipe file (or text); errors say which document."""
    text, place = read_source(source)
    documents = [d for d in load_yaml(text, place, documents=True) if d is not None]
    if not documents:
        raise RecipeError(f"{place}: no recipe in the file")
    if len(documents) > MAX_STAGES:
        raise RecipeError(
            f"{place}: {len(documents)} recipe documents (stages), over {MAX_STAGES} (MAX_STAGES)"
        )
    stages = []
    for i, data in enumerate(documents):
        # A plain one-document recipe keeps plain messages; documents are numbered from 1.
        where = f"document {i + 1}" if len(documents) > 1 else place
        if not isinstance(data, Mapping):
            raise RecipeError(
                f"{where}: a recipe must be a YAML mapping, got {type(data).__name__}"
            )
        name = _stage_name(data.get("name"), where) if len(documents) > 1 else None
        try:
            recipe = check_recipe(parse_recipe(data))
        except RecipeError as e:
            if len(documents) == 1:
                raise
            raise RecipeError(f"{where}{f' ({name})' if name else ''}: {e}") from None
        stages.append(Stage(name, recipe))
    _check_names(stages)
    return stage_order(stages)


def stage_order(stages: Sequence[Stage]) -> tuple[Stage, ...]:
    """Dependency order, file order among independent stages; the final stage last."""
    if len(stages) > MAX_STAGES:
        raise RecipeError(f"stages: {len(stages)} of them, over {MAX_STAGES} (MAX_STAGES)")
    by_name = {s.name: s for s in stages if s.name is not None}
    done: list[Stage] = []
    visiting: list[str] = []

    def visit(stage: Stage) -> None:
        if stage in done:
            return
        if stage.name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(stage.name) :], stage.name])
            raise RecipeError(f"stages: circular use of results: {cycle}")
        if stage.name is not None:
            visiting.append(stage.name)
        for ref in stage.recipe.referenced_models():
            if ref in by_name:
                visit(by_name[ref])
        if stage.name is not None:
            visiting.pop()
        done.append(stage)

    for stage in stages:
        visit(stage)
    unnamed = [s for s in done if s.name is None]
    return tuple([s for s in done if s.name is not None] + unnamed)


def merge_stages_to_disk(
    stages: Sequence[Stage],
    out_dir: str | Path,
    options: MergeOptions | None = None,
    *,
    keep: str | Path | None = None,
) -> Path:
    """Run the stages in order; the final one becomes `out_dir` (which must not exist)."""
    out = Path(out_dir)
    check_out_dir(out)
    _check_names(stages)
    order = stage_order(stages)
    kept = _check_keep(keep, out, [s.name for s in order[:-1] if s.name is not None])
    for stage in order:
        _check_tokenizer_files(stage.recipe, {s.name for s in order})
    written: list[Path] = []  # kept intermediates this run wrote: removed if it fails
    made = make_parents(kept / "x") if kept is not None else []
    try:
        with Staging(out, suffix=".stages") as work:  # the intermediates; removed at the end
            where = kept or work
            results: dict[str, str] = {}
            for stage in order[:-1]:
                assert stage.name is not None  # _check_names: only the final stage is unnamed
                recipe = with_results(stage.recipe, results)
                written.append(merge_to_disk(recipe, where / stage.name, options))
                results[stage.name] = str(written[-1])
            final = with_results(order[-1].recipe, results)
            return merge_to_disk(final, out, options, card=_card(order))
    except BaseException:
        for path in written if kept is not None else []:
            shutil.rmtree(path, ignore_errors=True)  # a rerun finds the places free again
        remove_made(made)
        raise


def _check_tokenizer_files(recipe: Recipe, stage_names: set[str | None]) -> None:
    """Before any stage runs: the tokenizer files of the models a stage builds its vocabulary
    from resolve inside those models (else a later stage is refused after earlier ones ran)."""
    spec = tokenizer_spec(recipe)
    if spec is None:
        return
    refs = [*recipe.referenced_models(), spec.source]
    for ref in dict.fromkeys(r for r in refs if r not in stage_names and r not in SOURCES):
        root = ModelRoot.of(resolve_model_dir(split_adapter(ref)[0]))
        for name in TOKENIZER_FILES:
            if root.exists(name):
                root.resolve(name)


def _check_keep(keep: str | Path | None, out: Path, names: Sequence[str]) -> Path | None:
    """--keep-intermediates: a directory (or a new one) apart from OUT_DIR, where no stage's
    result exists yet."""
    if keep is None:
        return None
    kept = Path(keep)
    if os.path.lexists(kept) and not kept.is_dir():
        raise MergeError(f"--keep-intermediates: {kept} exists and is not a directory")
    for name in names:
        if os.path.lexists(kept / name):
            raise MergeError(
                f"--keep-intermediates: {kept / name} already exists; remove it or keep the "
                "stages elsewhere"
            )
    if Path(os.path.abspath(kept)).is_relative_to(os.path.abspath(out)):
        raise MergeError(
            f"--keep-intermediates: {kept} is OUT_DIR or inside it; give a directory apart "
            "from OUT_DIR (OUT_DIR appears only complete, at the end)"
        )
    return kept


def merge_recipe_file(
    source: str | Path,
    out_dir: str | Path,
    options: MergeOptions | None = None,
    *,
    keep: str | Path | None = None,
) -> Path:
    """Merge a recipe file, one document or several stages, into `out_dir`."""
    stages = load_stages(source)
    if len(stages) == 1:
        return merge_to_disk(stages[0].recipe, out_dir, options)
    return merge_stages_to_disk(stages, out_dir, options, keep=keep)


def with_results(recipe: Recipe, results: Mapping[str, str]) -> Recipe:
    """The recipe with every use of an earlier stage's name replaced by its output path."""

    def sub(ref: str | None) -> Any:
        return results.get(ref, ref) if ref is not None else None

    return replace(
        recipe,
        base_model=sub(recipe.base_model),
        tokenizer_source=sub(recipe.tokenizer_source),
        models=tuple(replace(m, model=sub(m.model)) for m in recipe.models),
        slices=tuple(
            replace(
                s,
                base_model=sub(s.base_model),
                sources=tuple(replace(x, model=sub(x.model)) for x in s.sources),
            )
            for s in recipe.slices
        ),
    )


def dump_stages(stages: Sequence[Stage]) -> str:
    """The stages as one multi-document YAML text (loads back to the same stages)."""
    parts = []
    for stage in stages:
        head = f"name: {stage.name}\n" if stage.name is not None else ""
        parts.append(head + dump_recipe(stage.recipe))
    return "---\n".join(parts)


def _card(stages: Sequence[Stage]) -> str:
    models = sorted(
        {ref for s in stages for ref in s.recipe.referenced_models()}
        - {s.name for s in stages if s.name is not None}
    )
    return render_card(
        models=models,
        methods=[s.recipe.merge_method for s in stages],
        intro=f"Merged with evomerge (`python -m evomerge merge`) in {len(stages)} stages; each "
        "stage names its result, which later stages use as a model. The recipe below "
        "reproduces it.",
        recipe_yaml=dump_stages(stages),
    )


def _stage_name(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise RecipeError(
            f"{where}.name: must be letters, digits, '.', '_' or '-' (it names a directory), "
            f"got {preview(value)}"
        )
    return value


def _check_names(stages: Sequence[Stage]) -> None:
    seen: set[str] = set()
    unnamed = 0
    for i, stage in enumerate(stages):
        if stage.name is None:
            unnamed += 1
            if unnamed > 1:
                raise RecipeError(
                    f"document {i + 1}: only one document may be unnamed (the final merge); "
                    "give the others a `name`"
                )
        elif stage.name in seen:
            raise RecipeError(f"document {i + 1}.name: {preview(stage.name)} is used twice")
        else:
            seen.add(stage.name)
