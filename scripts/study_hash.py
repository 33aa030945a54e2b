"""Canonical dump of a search study's first trials, and its sha256 (identity check for refactors).

    python scripts/study_hash.py results/<run>/study.db [--run NAME] [--trials 30] [--out FILE]

Each of the first N trials (by number) as {number, state, value, params}: params sorted by
name, floats as repr (every bit shows). Two runs gave the same genomes and fitnesses iff the
printed hashes agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import optuna


def canonical(storage: str, run: str | None, n: int) -> str:
    study = optuna.load_study(study_name=run, storage=storage)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)[:n]
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": repr(t.value),
            "params": [[name, repr(t.params[name])] for name in sorted(t.params)],
        }
        for t in trials
    ]
    return json.dumps(rows, indent=1) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("db", type=Path, help="an SQLite study file")
    p.add_argument("--run", default=None, help="study name (default: the file's only study)")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--out", type=Path, default=None, help="write the canonical JSON here")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    text = canonical(f"sqlite:///{args.db}", args.run, args.trials)
    if args.out is not None:
        args.out.write_text(text)
    print(f"{len(json.loads(text))} trials, sha256 {hashlib.sha256(text.encode()).hexdigest()}")


if __name__ == "__main__":
    main()
