"""Oracle on a real checkpoint: the converted SmolLM2 (tied embeddings, GQA, BPE tokenizer with
a chat template) and bf16 fine-tunes of it, merged by mergekit 0.1.5 and by evomerge: the same
tensors, and the merged checkpoints generate the same text in transformers."""

from pathlib import Path

import pytest
import torch
import yaml

from evomerge.merge import MergeOptions, merge_to_disk
from evomerge.merge.multistage import load_stages, merge_stages_to_disk
from evomerge.recipe import load_recipe
from evomerge_dev.testing import load_tensors as _load
from evomerge_dev.testing import render_recipe as _render

mergekit_merge = pytest.importorskip("mergekit.merge")
mergekit_config = pytest.importorskip("mergekit.config")
mergekit_options = pytest.importorskip("mergekit.options")
mergekit_multi = pytest.importorskip("mergekit.scripts.multimerge")

CASES = {
    "linear": """
merge_method: linear
dtype: float32
models:
  - {model: $base, parameters: {weight: 0.2}}
  - {model: $a, parameters: {weight: [0.3, 0.9]}}
  - {model: $b, parameters: {weight: [{filter: mlp, value: 2.0}, {value: 0.5}]}}
""",
    "task_arithmetic": """
merge_method: task_arithmetic
dtype: float32
base_model: $base
models:
  - {model: $a, parameters: {weight: 0.7}}
  - {model: $b, parameters: {weight: [1.0, 0.2]}}
""",
    "ties": """
merge_method: ties
dtype: float32
base_model: $base
models:
  - {model: $a, parameters: {weight: 0.6, density: 0.4}}
  - {model: $b, parameters: {weight: 0.5, density: [0.2, 0.9]}}
""",
    "slerp": """
merge_method: slerp
dtype: float32
base_model: $a
models: [{model: $a}, {model: $b}]
parameters:
  t: [{filter: self_attn, value: [0, 0.5, 1]}, {filter: mlp, value: [1, 0.5, 0]}, {value: 0.3}]
""",
    "multi_stage": """
name: ab
merge_method: task_arithmetic
dtype: float32
base_model: $base
models:
  - {model: $a, parameters: {weight: 0.5}}
  - {model: $b, parameters: {weight: 0.5}}
---
merge_method: slerp
dtype: float32
base_model: $base
slices:
  - sources: [{model: $base, layer_range: [0, 2]}, {model: ab, layer_range: [0, 2]}]
  - sources: [{model: $base, layer_range: [2, 4]}, {model: ab, layer_range: [2, 4]}]
parameters: {t: 0.6}
""",
}
# bf16 inputs merged to float32 (`dtype: float32`): mergekit then computes in float32 too, as
# evomerge always does, so the results are comparable bit for bit (with bf16 output mergekit
# runs the task-arithmetic family in bf16: README, "float32 arithmetic for half-precision
# inputs"). slerp's norms sum in another order (1e-6, as in tests/merge). `ties` is demanded
# exact: bf16 deltas tie in magnitude at the trim threshold, where the kept entries are chosen
# by the tie rule, which must be mergekit's.
TOLERANCE = {"slerp": 1e-6, "multi_stage": 1e-6}


def _run_mergekit(text: str, out: Path, work: Path) -> Path:
    if "\n---\n" in text:  # mergekit-multi: stages by name, the unnamed one is the result
        (work / "multi.yaml").write_text(text)
        args = [str(work / "multi.yaml"), "-I", str(work / "stages"), "--out-path", str(out)]
        mergekit_multi.main.main([*args, "--quiet"], standalone_mode=False)
        return out
    config = mergekit_config.MergeConfiguration.model_validate(yaml.safe_load(text))
    mergekit_merge.run_merge(config, str(out), mergekit_options.MergeOptions(quiet=True))
    return out


def _run_evomerge(text: str, out: Path) -> Path:
    if "\n---\n" in text:
        return merge_stages_to_disk(load_stages(text), out, MergeOptions())
    return merge_to_disk(load_recipe(text), out, MergeOptions())


def _generate(directory: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    messages = [{"role": "user", "content": "What is 7 + 5?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    return str(tokenizer.decode(out[0][inputs["input_ids"].shape[1] :]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_tensors_and_text_as_mergekit(
    case: str, real_family: dict[str, Path], tmp_path: Path
) -> None:
    text = _render(CASES[case], real_family)
    theirs_dir = _run_mergekit(text, tmp_path / "mergekit", tmp_path)
    ours_dir = _run_evomerge(text, tmp_path / "evomerge")
    ours, theirs = _load(ours_dir), _load(theirs_dir)
    assert set(ours) == set(theirs)
    assert "lm_head.weight" not in ours  # tied: the head is the embedding
    differing, total, worst = 0, 0, 0.0
    for name in sorted(ours):
        assert ours[name].dtype == theirs[name].dtype == torch.float32, name
        diff = (ours[name].double() - theirs[name].double()).abs()
        differing += int((diff > 0).sum())
        total += diff.numel()
        worst = max(worst, diff.max().item())
    share = f"{differing}/{total} entries differ"
    print(f"real oracle {case}: {len(ours)} tensors, {share}, max abs diff {worst:.3g}")
    assert worst <= TOLERANCE.get(case, 0.0)
    assert _generate(ours_dir) == _generate(theirs_dir)


def test_ties_differences_are_tied_magnitudes_at_the_trim_threshold(
    real_family: dict[str, Path], tmp_path: Path
) -> None:
    """Where TIES outputs differ at all, some model's delta sits exactly at its trim threshold
    (the k-th largest magnitude, shared by other entries): which of those tied entries are
    kept is the tie rule's choice. Everything above the threshold is kept by both, everything
    below dropped by both, so no other entry may differ."""
    density = {"a": 0.4, "b": 0.7}
    text = _render(
        "merge_method: ties\ndtype: float32\nbase_model: $base\nmodels:\n"
        + "".join(
            f"  - {{model: ${m}, parameters: {{weight: 0.5, density: {d}}}}}\n"
            for m, d in density.items()
        ),
        real_family,
    )
    theirs = _load(_run_mergekit(text, tmp_path / "mergekit", tmp_path))
    ours = _load(_run_evomerge(text, tmp_path / "evomerge"))
    models = {k: _load(real_family[k]) for k in ("base", "a", "b")}
    differing = at_threshold = 0
    for name in sorted(ours):
        differs = ours[name] != theirs[name]
        tied = torch.zeros_like(differs)
        for m, d in density.items():
            delta = (models[m][name].float() - models["base"][name].float()).abs().flatten()
            k = int(d * delta.numel())
            threshold = delta.kthvalue(delta.numel() - k + 1).values  # the k-th largest
            tied |= (delta == threshold).view_as(differs) & (threshold > 0)
        differing += int(differs.sum())
        at_threshold += int((differs & tied).sum())
    print(f"ties: {differing} entries differ, {at_threshold} of them at a trim threshold")
    assert at_threshold == differing
