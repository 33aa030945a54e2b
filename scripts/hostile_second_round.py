"""The hostile inputs of the second round (issue #31), merge and eval side, by class:
tokenizer files and hub-cache snapshots (confinement), counts and sizes from files and recipes
(resources), what a refused or failed merge leaves behind (state), and one-line usage errors.
Run by scripts/hostile_inputs.py with the first round's cases (scripts/hostile_cases.py).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from hostile_cases import CANARY, Case, Fixture, _link, linear  # beside this script

# The environment of every case holds the canary: a case that reads /proc/self/environ into
# its output or messages shows it.
os.environ["EVOMERGE_HOSTILE_CANARY"] = CANARY


def _vocab_recipes(evil: Path, good: Path) -> dict[str, str]:
    """Every way a recipe builds a vocabulary, with `evil` where the tokenizer is read."""
    stage = f"name: s1\n{linear(good, evil)}---\n" + linear(
        "s1", good, extra=f"tokenizer_source: '{evil}'\n"
    )
    return {
        "base": linear(evil, good, extra=f"base_model: '{evil}'\ntokenizer_source: base\n"),
        "union": linear(good, evil, extra="tokenizer_source: union\n"),
        "model": linear(good, evil, extra=f"tokenizer_source: '{evil}'\n"),
        "section": linear(good, evil, extra="tokenizer: {source: union, pad_to_multiple_of: 8}\n"),
        "stage": stage,
    }


def tokenizer_cases(fx: Fixture) -> list[Case]:
    """Files a vocabulary is built from, linked outside, in each way a vocabulary is built."""
    cases = []
    links = {
        "tokenizer.json": fx.canary,
        "chat_template.jinja": fx.canary,
        "tokenizer_config.json": fx.canary,
    }
    for file, target in links.items():
        for way in ("base", "union", "model", "section", "stage"):
            name = f"vocab_{way}_{file.split('.')[0]}_link"
            evil = fx.evil(fx.case_dir(f"{name}_src"), _link(file, target))
            recipe = _vocab_recipes(evil, fx.a)[way]
            cases.append(fx.merge(name, "confinement", recipe, outside=True))
    for name, target in (("environ", Path("/proc/self/environ")), ("passwd", fx.canary)):
        where = fx.case_dir(f"chat_template_{name}_src")
        evil = fx.evil(where, _link("chat_template.jinja", target))
        recipe = _vocab_recipes(evil, fx.a)["model"]
        cases.append(fx.merge(f"chat_template_{name}", "confinement", recipe, outside=True))
    return cases


def _snapshot(root: Path, source: Path, repo: str) -> Path:
    """A Hugging Face cache entry: snapshots/<rev>/<file> -> ../../blobs/<hash>."""
    blobs, snapshot = root / repo / "blobs", root / repo / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(source.iterdir())):
        shutil.copyfile(f, blobs / f"b{i}")
        (snapshot / f.name).symlink_to(f"../../blobs/b{i}")
    return snapshot


def snapshot_cases(fx: Fixture) -> list[Case]:
    """Hub-cache snapshots: plain, sharded and reached through a user's symlink merge; links
    elsewhere in the repository folder (not its blobs/) are refused."""
    hub = fx.root / "hub31"
    plain = _snapshot(hub, fx.a, "models--org--tiny")
    sharded = _snapshot(hub, fx.big, "models--org--big")
    (fx.root / "models31").mkdir()
    linked = fx.root / "models31" / "tiny"
    linked.symlink_to(plain)  # models/tiny -> hub/models--org--tiny/snapshots/<rev>
    vocab = f"base_model: '{linked}'\ntokenizer_source: base\n"
    cases = [
        fx.merge("snapshot_plain", "confinement", linear(plain, fx.base), expect="accept"),
        fx.merge("snapshot_sharded", "confinement", linear(sharded, fx.big2), expect="accept"),
        fx.merge("snapshot_user_symlink", "confinement", linear(linked, fx.base), expect="accept"),
        fx.merge(
            "snapshot_user_symlink_vocab",
            "confinement",
            linear(linked, fx.base, extra=vocab),
            expect="accept",
        ),
    ]
    evil = _snapshot(hub, fx.a, "models--org--evil")
    (evil.parent.parent / "refs").mkdir()
    shutil.copyfile(fx.canary, evil.parent.parent / "refs" / "main")
    (evil / "tokenizer.json").unlink()
    (evil / "tokenizer.json").symlink_to("../../refs/main")  # in models--org--evil/, not blobs/
    cases.append(
        fx.merge("snapshot_link_outside_blobs", "confinement", linear(evil, fx.base), outside=True)
    )
    named = fx.root / "hub31b" / "models--org--named" / "snapshots" / "r1"
    named.parent.mkdir(parents=True)
    (named.parent.parent / "blobs").mkdir()
    shutil.copyfile(fx.canary, named.parent.parent / "blobs" / "secret")
    plain = fx.root / "plain31"
    shutil.copytree(fx.a, plain)
    named.symlink_to(plain)  # named like a snapshot; resolves to a plain directory
    (plain / "tokenizer.json").unlink()
    (plain / "tokenizer.json").symlink_to(named.parent.parent / "blobs" / "secret")
    cases.append(  # what the path resolves to decides: the plain directory is its only root
        fx.merge("snapshot_by_name_only", "confinement", linear(named, fx.base), outside=True)
    )
    adapter = fx.root / "adapter"
    lora = f"{fx.base}+{adapter}"
    for way, extra in (
        ("union", "tokenizer_source: union\n"),
        ("model", f"tokenizer_source: '{lora}'\n"),
    ):
        cases.append(
            fx.merge(
                f"lora_source_tokenizer_{way}",
                "confinement",
                linear(lora, fx.a, extra=extra),
                expect="accept",
            )
        )
    where = fx.case_dir("eval_subdir_template_link")
    evil_eval = fx.evil(where, lambda m: None)
    (evil_eval / "additional_chat_templates").mkdir()
    (evil_eval / "additional_chat_templates" / "x.jinja").symlink_to(fx.canary)
    argv = ["eval", f"model={evil_eval}", "task=toy_mgsm_ja", "limit=1"]
    cases.append(Case("eval_subdir_template_link", "confinement", argv, outside=True))
    return cases


def _config(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(model: Path) -> None:
        config = json.loads((model / "config.json").read_text())
        edit(config)
        (model / "config.json").write_text(json.dumps(config))

    return apply


def _nest(config: dict) -> None:
    deep: object = 1
    for _ in range(900):
        deep = {"x": deep}
    config["extra"] = deep


def _no_output(out: Path, err: str) -> str | None:
    return f"{out} was written" if out.exists() else None


def resource_cases(fx: Fixture) -> list[Case]:
    cases = []
    for name, edit in (
        ("layers_1e9", _config(lambda c: c.update(num_hidden_layers=10**9))),
        ("config_nested_900", _config(_nest)),
    ):
        evil = fx.evil(fx.case_dir(f"{name}_src"), edit)
        cases.append(fx.merge(name, "resources", linear(evil, fx.base), check=_no_output))
    n = 1500
    chain = [linear(f"s{n - 1}", fx.a)]
    chain += [f"name: s{i}\n" + linear(f"s{i - 1}" if i else fx.base, fx.a) for i in range(n)]
    one = f"&s {{sources: [{{model: '{fx.a}', layer_range: [0, 2]}}]}}"
    base_ta = f"base_model: '{fx.base}'\n"
    passthrough = (
        f"merge_method: passthrough\nslices:\n  - sources: [{{model: '{fx.a}', layer_range: [0, 2]"
    )
    recipes = {
        "pad_to_multiple_1e9": linear(fx.a, fx.base, extra="tokenizer: {pad_to_multiple_of: 1000000000}\n"),
        "stage_chain_1500_final_first": "---\n".join(chain),
        "slices_60000_by_alias": f"merge_method: passthrough\nslices:\n  - {one}\n" + "  - *s\n" * 60_000,
        "input_scale_1e-200": passthrough + "}]\n    input_scale: 1.0e-200\n",
        "input_scale_1e308": passthrough + "}]\n    input_scale: 1.0e308\n",
        "scale_1e308": passthrough + ", parameters: {scale: 1.0e308}}]\n",
        "lambda_1e308": linear(fx.a, fx.base, method="task_arithmetic", extra=base_ta + "parameters: {lambda: 1.0e308}\n"),
        "weight_1e308": linear(fx.a, fx.base, extra="parameters: {normalize: false}\n").replace("0.5", "1.0e308"),
    }  # fmt: skip
    for name, recipe in recipes.items():
        cases.append(fx.merge(name, "resources", recipe, check=_no_output))
    scalar = fx.root / "scalar_model"
    della = linear(scalar, fx.a, method="della", extra=f"base_model: '{fx.base}'\n")
    della = della.replace("weight: 0.5}", "weight: 0.5, density: 0.5, epsilon: 0.1}")
    cases.append(fx.merge("della_scalar_tensor", "resources", della))
    adapter = fx.root / "adapter"
    for name, edit in (
        ("lora_rank_pattern_backtracking", {"rank_pattern": {"(.|.)*j.": 2}}),
        ("lora_alpha_pattern_5000_chars", {"alpha_pattern": {"x" * 5000: 2}}),
        ("lora_alpha_1e308", {"lora_alpha": 1e308}),
    ):
        evil = fx.case_dir(f"{name}_src") / "adapter"
        shutil.copytree(adapter, evil)
        config = json.loads((evil / "adapter_config.json").read_text()) | edit
        (evil / "adapter_config.json").write_text(json.dumps(config))
        cases.append(
            fx.merge(name, "resources", linear(f"{fx.base}+{evil}", fx.a), check=_no_output)
        )
    cases.append(
        fx.merge(
            "threads_100000", "resources", linear(fx.a, fx.base), flags=["--threads", "100000"]
        )
    )
    return cases


def _gone(path: Path) -> Callable[[Path, str], str | None]:
    def check(out: Path, err: str) -> str | None:
        return f"{path} is left behind" if path.exists() else None

    return check


def _intact(path: Path, text: str) -> Callable[[Path, str], str | None]:
    def check(out: Path, err: str) -> str | None:
        ok = (path / "mine.txt").is_file() and (path / "mine.txt").read_text() == text
        return None if ok else f"{path} was changed or deleted"

    return check


def state_cases(fx: Fixture) -> list[Case]:
    """What a refused or failed merge leaves: nothing it made, everything it did not."""
    overflow = linear(fx.a, fx.base, extra="parameters: {normalize: false}\n").replace(
        "0.5", "1.0e308"
    )
    where = fx.case_dir("state_parents_of_a_failed_merge")
    (where / "r.yaml").write_text(overflow)
    out = where / "new" / "deeper" / "out"
    argv = ["merge", str(where / "r.yaml"), str(out), "--no-progress"]
    cases = [Case("state_parents_of_a_failed_merge", "state", argv, check=_gone(where / "new"))]
    for name, recipe, expect in (
        ("state_users_partial_refused", overflow, "refuse"),
        ("state_users_partial_merged", linear(fx.a, fx.base), "accept"),
    ):
        users = fx.root / "cases" / name / ".out.notes.partial"  # named like ours; the user's
        case = fx.merge(name, "state", recipe, expect=expect, check=_intact(users, "notes"))
        users.mkdir()
        (users / "mine.txt").write_text("notes")
        cases.append(case)
    return cases


def usage_cases(fx: Fixture) -> list[Case]:
    """Usage errors of merge, eval and toy: one line, exit 2."""
    return [
        Case("usage_merge_no_arguments", "usage", ["merge"]),
        Case("usage_merge_unknown_flag", "usage", ["merge", "r.yaml", "out", "--bogus"]),
        Case("usage_eval_unknown_flag", "usage", ["eval", f"model={fx.a}", "--bogus"]),
        Case("usage_eval_no_model", "usage", ["eval", "task=toy_mgsm_ja"]),
        Case("usage_toy_unknown_flag", "usage", ["toy", "--bogus"]),
        Case("usage_toy_threads_100000", "usage", ["toy", "--threads", "100000"]),
    ]


def second_round_cases(fx: Fixture) -> list[Case]:
    return (
        tokenizer_cases(fx)
        + snapshot_cases(fx)
        + resource_cases(fx)
        + state_cases(fx)
        + usage_cases(fx)
    )
