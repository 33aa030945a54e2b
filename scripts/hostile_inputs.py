"""Hostile inputs against `python -m evomerge merge` and `eval`, each class of issue #20 with
variants: files outside the model directory, inputs that exhaust memory or time, structures
and places that used to give tracebacks, silently accepted inputs, leftovers of killed merges.

    python scripts/hostile_inputs.py [--out results/reliability] [--timeout 120]
    (or: python scripts/reliability.py --parts hostile)

Every case runs as its own subprocess (timeout, peak RSS from wait4). A case expected to be
refused counts as refused cleanly when it exits 2 with one line on stderr and no traceback.
A canary file outside every model directory holds a unique token (and, for shards, a valid
safetensors file of tensors filled with a marker value): a case reads outside when the token
appears in its output directory or messages, or when a case whose only way to succeed is
reading outside the model succeeds. Writes <out>/hostile.json. The cases themselves are in
scripts/hostile_cases.py.

The models are built in a child process: this process never imports torch, so the peak RSS
that wait4 reports for a case is that case's own (Linux counts a forked parent's pages into
its child's peak).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hostile_cases import (  # beside this script
    CANARY,
    MARKER,
    Case,
    Fixture,
    confinement_cases,
    linear,
    resource_cases,
    strict_cases,
    traceback_cases,
)
from hostile_second_round import second_round_cases  # beside this script


@dataclass
class Outcome:
    name: str
    group: str
    expect: str
    code: int | None
    seconds: float
    peak_rss_mb: float
    clean: bool  # refused with exit 2, one line, no traceback (or accepted, as expected)
    read_outside: bool
    problem: str | None
    stderr_tail: str = field(default="")


# Address space of each case (RLIMIT_AS), as the second round's probe ran them: an input that
# makes a case allocate past this fails there instead of swapping the machine. torch's import
# and a tiny merge need under 3 GB of address space.
ADDRESS_SPACE_BYTES = 6 * 2**30


def _cap_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))


def run_case(case: Case, out: Path, timeout: float) -> Outcome:
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "evomerge", *case.argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_cap_address_space,
    )
    code, rss_kb, stdout, stderr = _wait(proc, timeout)
    seconds = time.monotonic() - start
    err = stderr.decode(errors="replace")
    lines = [x for x in err.splitlines() if x.strip()]
    seen = CANARY in err or CANARY in stdout.decode(errors="replace") or _canary_in(out)
    problem = case.check(out, err) if case.check else None
    if case.expect == "refuse":
        # progress bars of datasets (eval) may come first; the error is the last line
        clean = (
            code == 2
            and "Traceback" not in err
            and lines[-1:] != []
            and (len(lines) == 1 or case.argv[0] == "eval")
        )
    else:
        clean = code == 0
    read_outside = seen or (case.outside and code == 0)
    return Outcome(
        case.name,
        case.group,
        case.expect,
        code,
        round(seconds, 2),
        round(rss_kb / 1024, 1),
        clean and problem is None,
        read_outside,
        problem,
        (lines[-1] if lines else "")[:300],
    )


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int | None, int, bytes, bytes]:
    """(exit code or None on timeout, peak RSS in KB, stdout, stderr), read without deadlock."""
    deadline = time.monotonic() + timeout
    import threading

    chunks: dict[str, bytes] = {}

    def drain(name: str, stream: object) -> None:
        chunks[name] = stream.read()  # type: ignore[attr-defined]

    threads = [
        threading.Thread(target=drain, args=(n, s))
        for n, s in (("out", proc.stdout), ("err", proc.stderr))
        if s is not None
    ]
    for t in threads:
        t.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            for t in threads:
                t.join()
            proc.returncode = -9
            return None, usage.ru_maxrss, chunks.get("out", b""), chunks.get("err", b"")
        time.sleep(0.05)
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss, chunks.get("out", b""), chunks.get("err", b"")


def _canary_in(out: Path) -> bool:
    """The canary token, or the marker value of the outside shard, in anything written."""
    marker = struct.pack("<f", MARKER)
    try:
        paths = list(out.rglob("*")) if out.exists() else []
    except OSError:  # a name too long to exist
        return False
    for path in paths:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if CANARY.encode() in data or marker * 4 in data:
                return True
    return False


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def _complete(out: Path) -> bool:
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    return {"config.json", "README.md"} <= names and any(n.endswith(".safetensors") for n in names)


def _default_signals() -> None:
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def _kill_mid_merge(
    fx: Fixture, where: Path, sig: signal.Signals, timeout: float
) -> tuple[Path, list[str]]:
    """Start a merge, send `sig` as soon as its staging directory appears."""
    (where / "r.yaml").write_text(linear(fx.big, fx.big2))
    out = where / "out"
    argv = [sys.executable, "-m", "evomerge", "merge", str(where / "r.yaml"), str(out)]
    argv += ["--no-progress", "--shard-size", "1MB"]
    proc = subprocess.Popen(
        argv,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_default_signals,  # under nohup, SIGHUP would be ignored
    )
    deadline = time.monotonic() + timeout
    while not any(n.endswith(".partial") for n in _leftovers(out)) and proc.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.002)
    os.killpg(proc.pid, sig)
    proc.wait()
    return out, argv


def killed_merge_cases(fx: Fixture, timeout: float) -> list[Outcome]:
    """A merge killed by SIGKILL, SIGTERM or SIGHUP while writing; then the same command
    again: its leftover must be gone (the second run removes it) and the output complete."""
    outcomes = []
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGHUP):
        for attempt in range(3):  # a kill that lands after the merge finished is retried
            where = fx.case_dir(f"killed_{sig.name}_{attempt}")
            out, argv = _kill_mid_merge(fx, where, sig, timeout)
            left = _leftovers(out)
            if left:
                break
        rerun = run_case(
            Case(f"rerun_after_{sig.name}", "leftovers", argv[3:], expect="accept"), out, timeout
        )
        problem = None
        if not left:
            problem = "the kill came too late: nothing was left to clean"
        elif _leftovers(out):
            problem = f"left behind after the rerun: {_leftovers(out)}"
        elif not _complete(out):
            problem = "the rerun's output is incomplete"
        rerun.problem, rerun.clean = problem, rerun.clean and problem is None
        rerun.stderr_tail = f"killed leaving {left}; rerun: {rerun.stderr_tail}"
        outcomes.append(rerun)
    return outcomes


def racing_merge_cases(fx: Fixture, timeout: float, rounds: int = 3) -> list[Outcome]:
    """Two merges into one OUT_DIR at once: one winner, one clean refusal, a complete
    output, nothing left behind."""
    outcomes = []
    for r in range(rounds):
        where = fx.case_dir(f"race_{r}")
        (where / "r.yaml").write_text(linear(fx.base, fx.a))
        out = where / "out"
        argv = [
            sys.executable,
            "-m",
            "evomerge",
            "merge",
            str(where / "r.yaml"),
            str(out),
            "--no-progress",
        ]
        start = time.monotonic()
        procs = [
            subprocess.Popen(argv, stderr=subprocess.PIPE, start_new_session=True) for _ in range(2)
        ]
        results = [_wait(p, timeout) for p in procs]
        codes = sorted(-1 if c is None else c for c, *_ in results)
        errs = [e.decode(errors="replace") for *_, e in results]
        loser = [e for (c, *_), e in zip(results, errs, strict=True) if c != 0]
        problem = None
        if codes != [0, 2]:
            problem = f"exit codes {codes}"
        elif any("Traceback" in e or e.count("\n") != 1 for e in loser):
            problem = f"the loser's message: {loser}"
        elif not _complete(out) or _leftovers(out):
            problem = "incomplete output or leftovers"
        outcomes.append(
            Outcome(
                f"race_{r}",
                "leftovers",
                "one winner",
                codes[-1],
                round(time.monotonic() - start, 2),
                round(max(rss for _, rss, *_ in results) / 1024, 1),
                problem is None,
                False,
                problem,
                (loser[0].strip() if loser else "")[:300],
            )
        )
    return outcomes


def keep_intermediates_rerun(fx: Fixture, timeout: float) -> Outcome:
    """--keep-intermediates with a later stage failing, then the same command with that stage
    fixed: the first run leaves nothing, the rerun merges and keeps both stages."""
    where = fx.case_dir("state_keep_intermediates_rerun")
    recipe, keep, out = where / "r.yaml", where / "new" / "keep", where / "out"

    def stages(second: object) -> str:
        first = f"name: s1\n{linear(fx.a, fx.base)}"
        return f"{first}---\nname: s2\n{linear('s1', second)}---\n{linear('s2', fx.base)}"

    recipe.write_text(stages(where / "no_such_model"))
    argv = ["merge", str(recipe), str(out), "--no-progress", "--keep-intermediates", str(keep)]
    first = run_case(Case("keep_first", "state", argv), out, timeout)
    left = sorted(p.name for p in where.iterdir())
    recipe.write_text(stages(fx.base))
    rerun = run_case(Case("state_keep_intermediates_rerun", "state", argv, "accept"), out, timeout)
    problem = None
    if not first.clean:
        problem = f"the failing run: exit {first.code}, {first.stderr_tail}"
    elif left != ["r.yaml"]:
        problem = f"the failing run left {left}"
    elif not keep.is_dir() or sorted(p.name for p in keep.iterdir()) != ["s1", "s2"]:
        problem = "the rerun did not keep both stages"
    rerun.problem, rerun.clean = problem, rerun.clean and problem is None
    rerun.stderr_tail = f"first run: {first.stderr_tail}"[:300]
    return rerun


# --- running and reporting -----------------------------------------------------------------


def run_all(out_dir: Path, timeout: float = 120.0, only_second: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="evomerge-hostile-") as tmp:
        fx = Fixture(Path(tmp))
        cases = confinement_cases(fx) + resource_cases(fx) + traceback_cases(fx) + strict_cases(fx)
        cases = second_round_cases(fx) if only_second else cases + second_round_cases(fx)
        outcomes = []
        for case in cases:
            o = run_case(
                case,
                Path(case.argv[2])
                if case.argv[0] == "merge" and len(case.argv) > 2
                else fx.root / "none",
                timeout,
            )
            outcomes.append(o)
            flag = "ok " if o.clean and not o.read_outside else "BAD"
            print(
                f"{flag} {o.group:11s} {o.name:34s} exit={o.code} {o.seconds:6.1f}s "
                f"{o.peak_rss_mb:7.1f}MB  {o.problem or o.stderr_tail[:110]}",
                flush=True,
            )
        more = (
            [] if only_second else killed_merge_cases(fx, timeout) + racing_merge_cases(fx, timeout)
        )
        for o in [*more, keep_intermediates_rerun(fx, timeout)]:
            outcomes.append(o)
            flag = "ok " if o.clean else "BAD"
            print(
                f"{flag} {o.group:11s} {o.name:34s} exit={o.code} {o.seconds:6.1f}s "
                f"{o.peak_rss_mb:7.1f}MB  {o.problem or o.stderr_tail[:110]}",
                flush=True,
            )
    figures = summarize(outcomes)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "hostile.json").write_text(
        json.dumps({"summary": figures, "cases": [asdict(o) for o in outcomes]}, indent=2) + "\n"
    )
    print(json.dumps(figures, indent=2))
    return figures


def summarize(outcomes: list[Outcome]) -> dict:
    refuse = [o for o in outcomes if o.expect == "refuse"]
    worst = max(outcomes, key=lambda o: o.peak_rss_mb)
    slowest = max(outcomes, key=lambda o: o.seconds)
    groups = sorted({o.group for o in outcomes})
    return {
        "cases": len(outcomes),
        "to_refuse": len(refuse),
        "refused_cleanly": sum(o.clean for o in refuse),
        "legitimate_or_special_ok": sum(o.clean for o in outcomes if o.expect != "refuse"),
        "legitimate_or_special": sum(o.expect != "refuse" for o in outcomes),
        "read_outside": sum(o.read_outside for o in outcomes),
        "timeouts": sum(o.code is None for o in outcomes),
        "peak_rss_mb_worst": worst.peak_rss_mb,
        "peak_rss_worst_case": worst.name,
        "seconds_worst": slowest.seconds,
        "seconds_worst_case": slowest.name,
        "per_class": {
            g: f"{sum(o.clean and not o.read_outside for o in outcomes if o.group == g)}/"
            f"{sum(o.group == g for o in outcomes)}"
            for g in groups
        },
        "failed": [o.name for o in outcomes if not o.clean or o.read_outside],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/reliability"))
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--only-second-round", action="store_true", help="the second round's cases only"
    )
    args = parser.parse_args()
    run_all(args.out, args.timeout, args.only_second_round)


if __name__ == "__main__":
    main()
