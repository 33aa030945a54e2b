"""The toy family's language: character-level prompts, deterministic generators and splits.

Every example is a prompt and the answer the model must write after it, e.g.

    E12+7=   -> 19.       English mode: the answer is written in ASCII digits
    J12+7=   -> 一九.     Japanese mode: the answer is written in kanji digits, one per digit

Prompts start with a mode character (`E` or `J`) and end with `=`; answers end with `.`.
Skills: sums (`+`), the larger of two numbers (`M`), copy (`C`), translation of a number
between the two scripts (`T`), the successor of a 2-digit number (`S`: `JS37=` -> `三八.`) and
its double (`D`; in the vocabulary and the skill table, in no mix of toy v3 or v4).
The toy analog of MGSM-JA is `J` sums of a 2-digit and a 1-digit number, which no model of the
family is ever trained on: the math specialist does them only in English mode, the language
specialist answers in Japanese but cannot add.

Splits are by prompt body (the prompt without its mode character), so a held-out test problem
is never trained in either mode. The 2-digit + 1-digit sums have 1,800 distinct bodies: 300 go
to the test split, 700 to the fitness split (disjoint from test; the search scores candidates
on it), and training never sees the test bodies.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial

EN_DIGITS = "0123456789"
JA_DIGITS = "〇一二三四五六七八九"
MODES = ("E", "J")
END = "."  # every answer ends here; generation stops at it

# Sizes of the fixed evaluation sets. 300 prompts give a standard error of under 3 points;
# 700 fitness prompts keep a per-layer search from over-fitting them (200 did not, see the notes).
TEST_SIZE = 300
FIT_SIZE = 700
SPLIT_SEED = 999  # fixed: the splits are part of the family's version, not of its training seed


@dataclass(frozen=True)
class Example:
    """One problem: `prompt` is fed to the model, which must continue with `answer`."""

    prompt: str
    answer: str
    value: int  # the number the answer writes
    script: str  # "en" (ASCII digits) or "ja" (kanji digits)

    @property
    def body(self) -> str:
        """The prompt without its mode character: the key splits are made on."""
        return self.prompt[1:]


def write_number(n: int, script: str) -> str:
    """`19` in script "en" is "19", in "ja" "一九" (positional kanji digits)."""
    digits = str(n)
    return digits if script == "en" else "".join(JA_DIGITS[int(d)] for d in digits)


def read_answer(text: str) -> tuple[int | None, str | None]:
    """Parse a response into (number, script); (None, None) unless it is all one script's digits.

    The response may keep the closing `.` and surrounding whitespace.
    """
    s = text.strip()
    if s.endswith(END):
        s = s[: -len(END)].rstrip()
    if s and all(c in EN_DIGITS for c in s):
        return int(s), "en"
    if s and all(c in JA_DIGITS for c in s):
        return int("".join(str(JA_DIGITS.index(c)) for c in s)), "ja"
    return None, None


def _script(mode: str) -> str:
    return "en" if mode == "E" else "ja"


def _example(prompt: str, value: int, answer_mode: str) -> Example:
    script = _script(answer_mode)
    return Example(prompt, write_number(value, script) + END, value, script)


def sum_example(mode: str, a: int, b: int) -> Example:
    """`{mode}{a}+{b}=`; operands are written in ASCII digits in both modes."""
    return _example(f"{mode}{a}+{b}=", a + b, mode)


def max_example(mode: str, a: int, b: int) -> Example:
    return _example(f"{mode}{a}M{b}=", max(a, b), mode)


def copy_example(mode: str, a: int) -> Example:
    return _example(f"{mode}C{a}=", a, mode)


def translate_example(mode: str, a: int) -> Example:
    """The number is written in the mode's script and answered in the other one."""
    other = "J" if mode == "E" else "E"
    return _example(f"{mode}T{write_number(a, _script(mode))}=", a, other)


def successor_example(mode: str, a: int) -> Example:
    """`{mode}S{a}=` -> a + 1: a computed number (with a carry when a ends in 9) in the mode's
    script, so the base learns to write computed values, not only copied digits, in kanji."""
    return _example(f"{mode}S{a}=", a + 1, mode)


def double_example(mode: str, a: int) -> Example:
    """`{mode}D{a}=` -> 2a (tried as a base skill; it made the base and both parents stronger
    at sums and the merges no better)."""
    return _example(f"{mode}D{a}=", 2 * a, mode)


def _number(rng: random.Random, digits: int) -> int:
    lo = 10 ** (digits - 1) if digits > 1 else 0
    return rng.randint(lo, 10**digits - 1)


def _sum21(rng: random.Random, mode: str, lo: int = 10, hi: int = 99) -> Example:
    """A 2-digit number in [lo, hi] plus a 1-digit number, in either order."""
    a, b = rng.randint(lo, hi), _number(rng, 1)
    if rng.random() < 0.5:
        a, b = b, a
    return sum_example(mode, a, b)


Generator = Callable[[random.Random], Example]


def _sum11(rng: random.Random, mode: str) -> Example:
    return sum_example(mode, _number(rng, 1), _number(rng, 1))


def _max(rng: random.Random, mode: str) -> Example:
    return max_example(mode, _number(rng, rng.choice([1, 2])), _number(rng, rng.choice([1, 2])))


def _copy(rng: random.Random, mode: str) -> Example:
    return copy_example(mode, _number(rng, rng.choice([2, 3])))


def _successor(rng: random.Random, mode: str) -> Example:
    return successor_example(mode, rng.randint(10, 98))


def _double(rng: random.Random, mode: str) -> Example:
    return double_example(mode, rng.randint(10, 99))


def _translate(rng: random.Random, mode: str) -> Example:
    return translate_example(mode, _number(rng, rng.choice([2, 3])))


def _skills() -> dict[str, Generator]:
    """Every trainable skill by name: `{mode}_{skill}`."""
    table: dict[str, Generator] = {}
    for m in MODES:
        table[f"{m}_add11"] = partial(_sum11, mode=m)
        table[f"{m}_add21"] = partial(_sum21, mode=m)
        # the two halves of the 2-digit operand's range, for math specialists on part of it
        table[f"{m}_add21_lo"] = partial(_sum21, mode=m, lo=10, hi=54)
        table[f"{m}_add21_hi"] = partial(_sum21, mode=m, lo=55, hi=99)
        table[f"{m}_max"] = partial(_max, mode=m)
        table[f"{m}_copy"] = partial(_copy, mode=m)
        table[f"{m}_tr"] = partial(_translate, mode=m)
        table[f"{m}_succ"] = partial(_successor, mode=m)
        table[f"{m}_dbl"] = partial(_double, mode=m)
    return table


SKILLS: dict[str, Generator] = _skills()


def sum21_bodies() -> list[str]:
    """All 1,800 bodies of 2-digit + 1-digit sums, both orders, in a fixed order."""
    out = []
    for a in range(10, 100):
        for b in range(10):
            out += [f"{a}+{b}=", f"{b}+{a}="]
    return out


@dataclass(frozen=True)
class Splits:
    """Held-out prompt bodies; fixed by SPLIT_SEED, independent of any training seed."""

    sum_test: tuple[str, ...]  # 2+1 sums: the target's test split and the math probes
    sum_fit: tuple[str, ...]  # 2+1 sums: the target's fitness split, disjoint from sum_test
    max_test: tuple[str, ...]  # max of two numbers: the language probe

    @property
    def heldout(self) -> frozenset[str]:
        """Bodies training must never see (in either mode)."""
        return frozenset(self.sum_test) | frozenset(self.max_test)


def make_splits() -> Splits:
    rng = random.Random(SPLIT_SEED)
    bodies = sum21_bodies()
    rng.shuffle(bodies)
    max_bodies: list[str] = []
    seen: set[str] = set()
    gen = SKILLS["E_max"]
    while len(max_bodies) < TEST_SIZE:
        body = gen(rng).body
        if body not in seen:
            seen.add(body)
            max_bodies.append(body)
    return Splits(
        sum_test=tuple(bodies[:TEST_SIZE]),
        sum_fit=tuple(bodies[TEST_SIZE : TEST_SIZE + FIT_SIZE]),
        max_test=tuple(max_bodies),
    )


def parse_body(mode: str, body: str) -> Example:
    """Rebuild the example of a held-out body in a mode (`12+7=` -> `J12+7=` -> `一九.`)."""
    expr = body.rstrip("=")
    if "+" in expr:
        a, b = expr.split("+")
        return sum_example(mode, int(a), int(b))
    if "M" in expr:
        a, b = expr.split("M")
        return max_example(mode, int(a), int(b))
    raise ValueError(f"cannot rebuild an example from body {body!r}")


def sample_mix(
    rng: random.Random, weights: Mapping[str, float], heldout: frozenset[str]
) -> Iterator[Example]:
    """Endless examples drawn from the named skills in proportion to `weights`, skipping
    held-out bodies. Deterministic given the state of `rng`."""
    names = sorted(weights)
    w = [weights[n] for n in names]
    while True:
        ex = SKILLS[rng.choices(names, w)[0]](rng)
        if ex.body not in heldout:
            yield ex
