"""Run a merge plan: tensor by tensor, to a checkpoint on disk or into a live model."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from evomerge.errors import MergeError, preview
from evomerge.merge.architecture import check_compatible
from evomerge.merge.blocks import map_blocks
from evomerge.merge.cache import SourceCache
from evomerge.merge.drops import CounterDraws
from evomerge.merge.io import ShardedWriter, resolve_model_dir
from evomerge.merge.lora import split_adapter
from evomerge.merge.methods import MergeArgs, TaskVector
from evomerge.merge.out_dir import Staging, check_out_dir
from evomerge.merge.output import check_extras, write_extras
from evomerge.merge.overlap import BackgroundWriter, read_ahead, torch_threads
from evomerge.merge.plan import MergePlan, TensorJob, plan_merge
from evomerge.merge.recipe_checks import check_distinct_models, check_recipe
from evomerge.merge.selection import Selection, recipe_tie_rule
from evomerge.merge.sparsify import RandomDraws
from evomerge.merge.vocabulary import VOCAB_TENSORS, build_vocabulary, permute_rows, tokenizer_spec
from evomerge.recipe import Recipe

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class MergeOptions:
    """How to run a merge (the recipe says what to merge).

    random_seed overrides the recipe's `random_seed`; with neither, seeded methods use 0, so a
    merge is always reproducible. out_dtype overrides the recipe's `out_dtype`. A merge to disk
    computes on `threads` torch threads while one more thread reads ahead and another writes
    behind (overlap.py); the result does not depend on the thread count.
    """

    device: str = "cpu"
    allow_pickle: bool = False
    trust_remote_code: bool = False  # only Llama-family layouts are merged; see architecture.py
    shard_size: int = 5 * 10**9  # bytes per output shard (mergekit's default, 5 GB)
    random_seed: int | None = None
    out_dtype: str | None = None
    progress: bool = False
    threads: int | None = None  # torch threads for the arithmetic; None: torch's setting


def merge_to_disk(
    recipe: Recipe,
    out_dir: str | Path,
    options: MergeOptions | None = None,
    *,
    card: str | None = None,
) -> Path:
    """Merge into a new Hugging Face checkpoint at `out_dir` (which must not exist).

    Everything is written to a staging directory beside `out_dir`, fsynced and renamed into
    place at the end, so on any error nothing appears at `out_dir` (see out_dir.py). Reading,
    arithmetic and writing overlap (overlap.py). `card` replaces the model card (README.md)
    written from the recipe.
    """
    options = options or MergeOptions()
    out = Path(out_dir)
    check_out_dir(out)
    device = _device(options)
    cache = SourceCache(preload=False)
    plan = _plan(recipe, cache, options)
    check_extras(plan, cache)
    staging = Staging(out)
    with staging as tmp:
        layout = [(job.name, job.shape, _output_dtype(plan, job, options)) for job in plan.jobs]
        writer = BackgroundWriter(ShardedWriter(tmp, options.shard_size, layout))
        try:
            with torch_threads(options.threads):
                for name, tensor, _ in _merged_tensors(plan, cache, device, options):
                    writer.add(name, tensor)
            writer.finish()
        finally:
            writer.close()
        write_extras(plan, cache, tmp, _out_dtype_name(plan, options), card)
        return staging.commit()


def merge_into_model(
    recipe: Recipe,
    model: torch.nn.Module,
    options: MergeOptions | None = None,
    cache: SourceCache | None = None,
) -> frozenset[str]:
    """Write the merged tensors into `model`'s parameters and buffers in place (no disk writes).

    The numbers equal merge_to_disk's for the same recipe and options. Pass one SourceCache
    (preload=True to keep source tensors in memory) across calls to avoid re-reading. Checks
    that need no weights run first; an error while merging (e.g. NaN) leaves the model partly
    overwritten, so treat it as unusable until the next successful merge.

    Returns the names of the written tensors known to be finite (every merged tensor is
    checked; one holding inf, or converted to a narrower dtype on writing, is not listed), so
    a caller that needs finite weights checks only the rest.
    """
    options = options or MergeOptions()
    cache = cache or SourceCache()
    device = _device(options)
    plan = _plan(recipe, cache, options)
    targets = dict(model.named_parameters()) | dict(model.named_buffers())
    missing = [job.name for job in plan.jobs if job.name not in targets]
    if missing:
        raise MergeError(f"the model has no parameter or buffer for merged tensors {missing[:5]}")
    written = set()
    finite = set()
    with torch.no_grad():
        for name, tensor, is_finite in _merged_tensors(plan, cache, device, options):
            target = targets[name]
            if target.shape != tensor.shape:
                raise MergeError(
                    f"shape mismatch for {name}: model has {list(target.shape)}, "
                    f"merge gives {list(tensor.shape)}"
                )
            target.copy_(tensor)
            written.add(name)
            if is_finite and target.dtype == tensor.dtype:
                finite.add(name)
    unwritten = [name for name, _ in model.named_parameters() if name not in written]
    if unwritten:
        raise MergeError(f"the merge left model parameters unwritten: {unwritten[:5]}")
    return frozenset(finite)


def _device(options: MergeOptions) -> torch.device:
    """The compute device, once the options are checked."""
    if options.out_dtype is not None and options.out_dtype not in DTYPES:
        raise MergeError(
            f"out_dtype: must be one of {', '.join(DTYPES)}, got {preview(options.out_dtype)}"
        )
    if options.threads is not None and options.threads < 1:
        raise MergeError(f"threads: must be >= 1, got {options.threads}")
    if options.device not in ("cpu", "cuda") and not options.device.startswith("cuda:"):
        raise MergeError(f"device: must be cpu or cuda, got {preview(options.device)}")
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise MergeError("device: cuda requested but no CUDA device is available; use --device cpu")
    return torch.device(options.device)


def _identity(cache: SourceCache, ref: str) -> str:
    """What makes two references the same model: the real directories (BASE's and ADAPTER's)."""
    adapter = split_adapter(ref)[1]
    base = os.path.realpath(cache.directory(ref))
    return base if adapter is None else f"{base}+{os.path.realpath(resolve_model_dir(adapter))}"


def _plan(recipe: Recipe, cache: SourceCache, options: MergeOptions) -> MergePlan:
    refs = check_recipe(recipe).referenced_models()
    check_distinct_models(recipe, lambda ref: _identity(cache, ref))
    layouts = {ref: cache.layout(ref, allow_pickle=options.allow_pickle) for ref in refs}
    merges_vocabularies = tokenizer_spec(recipe) is not None
    check_compatible([layouts[ref] for ref in refs], ("vocab_size",) if merges_vocabularies else ())
    sizes = {ref: int(layout.config.get("vocab_size") or 0) for ref, layout in layouts.items()}
    vocabulary = build_vocabulary(recipe, cache.directory, sizes)  # reads tokenizers only
    return plan_merge(recipe, layouts, vocabulary)


def _out_dtype_name(plan: MergePlan, options: MergeOptions) -> str | None:
    return options.out_dtype or plan.recipe.out_dtype or plan.recipe.dtype


def _output_dtype(plan: MergePlan, job: TensorJob, options: MergeOptions) -> torch.dtype:
    """Floats: out_dtype, else the recipe's dtype, else the inputs' dtype; others are kept."""
    name = _out_dtype_name(plan, options)
    return DTYPES[name] if name and job.dtype.is_floating_point else job.dtype


def _merged_tensors(
    plan: MergePlan, cache: SourceCache, device: torch.device, options: MergeOptions
) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(name, merged tensor in its output dtype, whether every entry is finite) per job."""
    recipe = plan.recipe
    seed = options.random_seed if options.random_seed is not None else recipe.random_seed or 0
    in_dtype = DTYPES[recipe.dtype] if recipe.dtype else None

    def stage(job: TensorJob) -> None:
        for inp in job.inputs:
            cache.stage(inp.model, inp.name, device)

    ordered = read_ahead(plan.jobs, stage)
    total = len(plan.jobs)
    jobs = tqdm(ordered, desc="merging", unit="tensor", total=total, disable=not options.progress)
    for job in jobs:
        out_dtype = _output_dtype(plan, job, options)
        result = run_job(
            plan, job, cache, device, seed=seed, in_dtype=in_dtype, out_dtype=out_dtype
        ).to(out_dtype)
        yield job.name, result, _check_finite(plan, job, result)


def run_job(
    plan: MergePlan,
    job: TensorJob,
    cache: SourceCache,
    device: torch.device,
    *,
    seed: int,
    in_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One output tensor: read inputs, cast (recipe dtype, then float32 compute), merge.

    The result is in the compute dtype, or in `out_dtype` when given (entry-wise methods then
    round block by block, never holding the whole tensor in float32). Not checked for NaN.
    """
    tensors = [cache.tensor(inp.model, inp.name, device) for inp in job.inputs]
    if plan.vocabulary is not None and job.name in VOCAB_TENSORS:  # rows laid out by token
        tensors = permute_rows(plan.vocabulary, job.name, [i.model for i in job.inputs], tensors)
    if not all(t.is_floating_point() for t in tensors):
        return _agreed_buffer(job, tensors)
    if plan.method.entrywise and tensors[0].dim() > 0 and tensors[0].numel() > BLOCK:
        return _run_blockwise(plan, job, tensors, in_dtype, out_dtype)
    # Inputs are rounded to the recipe's dtype (as mergekit does), then merged in float32
    # (float64 stays) and rounded once at the end.
    first = in_dtype or tensors[0].dtype
    compute = torch.float64 if first == torch.float64 else torch.float32
    selection = _selection(plan, tensors, in_dtype, compute)
    vectors: tuple[TaskVector, ...] = ()
    if plan.method.takes_task_vectors:
        vectors = _task_vectors(job, tensors, cache, in_dtype, compute)
    if vectors:  # the search: only the base is needed besides the kept task vectors
        inputs: list[torch.Tensor] = []
        base: torch.Tensor | None = _cast(tensors[-1], in_dtype, compute)
        tensors.clear()  # the sources are not needed (nor kept) while the method runs
    else:
        inputs, base = _compute_inputs(plan, job, tensors, in_dtype, compute)
    n = len(job.inputs) - int(job.has_base)
    scheme = plan.recipe.drop_scheme or "torch_cpu"
    generators = _random_draws(job, seed, n, scheme) if plan.method.seeded else ()
    args = MergeArgs(job.per_model, job.shared, generators, vectors, selection)
    return plan.method.fn(inputs, base, args)


def _compute_inputs(
    plan: MergePlan,
    job: TensorJob,
    tensors: list[torch.Tensor],
    in_dtype: torch.dtype | None,
    compute: torch.dtype,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """(non-base inputs, base) as the method takes them; one at a time, to free each original
    early (`tensors` is emptied)."""
    if (plan.method.takes_task_vectors and job.has_base) or plan.method.converts_inputs:
        # Inputs narrower than the compute dtype are passed as they are, not as whole float32
        # copies (N whole tensors at once for the embeddings): x - base with a float32 base
        # converts x exactly on the fly, and converts_inputs methods convert row blocks.
        for i, t in enumerate(tensors):
            rounded = t.to(in_dtype) if in_dtype is not None else t
            is_base = job.has_base and i == len(tensors) - 1
            kept = (plan.method.converts_inputs or not is_base) and _converts_exactly(
                rounded.dtype, compute
            )
            tensors[i] = rounded if kept else _cast(t, in_dtype, compute)
    else:
        for i, t in enumerate(tensors):
            tensors[i] = _cast(t, in_dtype, compute)
    base = tensors.pop() if job.has_base else None
    inputs = list(tensors)
    tensors.clear()
    return inputs, base


def _selection(
    plan: MergePlan,
    tensors: list[torch.Tensor],
    in_dtype: torch.dtype | None,
    compute: torch.dtype,
) -> Selection:
    """The recipe's tie rule, and the dtype mergekit would subtract in (the recipe's dtype,
    else the inputs' promoted one) where it is narrower than the compute dtype."""
    rule = recipe_tie_rule(plan.recipe.tie_rule, plan.recipe.drop_scheme)
    narrow = in_dtype
    if narrow is None:
        narrow = tensors[0].dtype
        for t in tensors[1:]:
            narrow = torch.promote_types(narrow, t.dtype)
    return Selection(rule, narrow if narrow != compute else None)


def _cast(t: torch.Tensor, in_dtype: torch.dtype | None, compute: torch.dtype) -> torch.Tensor:
    return t.to(in_dtype).to(compute) if in_dtype is not None else t.to(compute)


def _task_vectors(
    job: TensorJob,
    tensors: list[torch.Tensor],
    cache: SourceCache,
    in_dtype: torch.dtype | None,
    compute: torch.dtype,
) -> tuple[TaskVector, ...]:
    """x_i - base per non-base input, from the cache (made on first use), or () when the
    cache keeps none or they do not fit its budget: the method then subtracts itself."""
    if not job.has_base or cache.task_vector_bytes <= 0:
        return ()
    base_input, base = job.inputs[-1], tensors[-1]
    where = (str(base.device), str(in_dtype), str(compute))
    keys = [
        (inp.model, inp.name, base_input.model, base_input.name, *where) for inp in job.inputs[:-1]
    ]

    def make(i: int) -> TaskVector:
        return TaskVector.of(_cast(tensors[i], in_dtype, compute), _cast(base, in_dtype, compute))

    return cache.task_vectors(keys, make, base.numel() * compute.itemsize)


def _check_finite(plan: MergePlan, job: TensorJob, tensor: torch.Tensor) -> bool:
    """Whether every entry is finite; raises on NaN. A sum is finite only when every entry
    is (NaN and inf propagate), so one fast reduction settles the usual case."""
    if not tensor.is_floating_point():
        return True
    # float16 sums of ordinary weights overflow (max 65504): accumulate those in float32; a
    # bfloat16 sum accumulates in float32 already (dtype= would convert the tensor first)
    total = tensor.sum(dtype=torch.float32) if tensor.dtype == torch.float16 else tensor.sum()
    if bool(torch.isfinite(total)):
        return True
    if bool(tensor.isnan().any()):
        raise MergeError(f"merging {job.name} with {plan.method.name} produced NaN")
    return bool(torch.isfinite(tensor).all())


# Entry-wise methods (the registry's `entrywise`) merge in row blocks: the float32 copies (one
# per input, plus the sum) shrink from whole tensors to one block, which cuts peak memory and
# keeps the arithmetic in cache.
BLOCK = 1 << 20  # entries per block: 4 MB per float32 copy


def _run_blockwise(
    plan: MergePlan,
    job: TensorJob,
    tensors: list[torch.Tensor],
    in_dtype: torch.dtype | None,
    out_dtype: torch.dtype | None,
) -> torch.Tensor:
    first = in_dtype or tensors[0].dtype
    compute = torch.float64 if first == torch.float64 else torch.float32
    if in_dtype is not None:
        tensors = [t.to(in_dtype) for t in tensors]
    rows = max(1, BLOCK // max(1, tensors[0][0].numel()))
    out = torch.empty(tensors[0].shape, dtype=out_dtype or compute, device=tensors[0].device)
    args = MergeArgs(per_model=job.per_model, shared=job.shared)
    # as in run_job: x - base converts narrower inputs of task-vector methods exactly
    subtracted = plan.method.takes_task_vectors and job.has_base
    keep = [subtracted and _converts_exactly(t.dtype, compute) for t in tensors[:-1]] + [False]

    def merge_block(i: int) -> None:  # blocks write disjoint rows: any thread, same bytes
        block = [t[i * rows : (i + 1) * rows] for t in tensors]
        block = [b if kept else b.to(compute) for b, kept in zip(block, keep, strict=True)]
        base = block.pop() if job.has_base else None
        out[i * rows : (i + 1) * rows] = plan.method.fn(block, base, args)

    map_blocks(-(-out.shape[0] // rows), merge_block, out.device)
    return out


def _converts_exactly(dtype: torch.dtype, compute: torch.dtype) -> bool:
    """Whether arithmetic with a `compute` tensor promotes `dtype` to `compute` (exactly)."""
    return torch.promote_types(dtype, compute) == compute


def _random_draws(
    job: TensorJob, seed: int, n: int, scheme: str
) -> list[RandomDraws] | list[CounterDraws]:
    """One draw source per non-base input, keyed by (seed, tensor name, input index); none
    keeps its draws (the counter scheme computes them on the merge device, block by block)."""
    if scheme == "counter":
        return [CounterDraws.for_input(seed, job.name, i) for i in range(n)]
    out = []
    for i in range(n):
        digest = hashlib.sha256(f"{seed}/{job.name}/{i}".encode()).digest()
        out.append(RandomDraws(int.from_bytes(digest[:8], "little") & (2**63 - 1)))
    return out


def _agreed_buffer(job: TensorJob, tensors: list[torch.Tensor]) -> torch.Tensor:
    first = tensors[0]
    if any(t.dtype != first.dtype or not torch.equal(t, first) for t in tensors[1:]):
        raise MergeError(f"non-float tensor {job.name} differs between models; cannot merge it")
    return first.clone()
