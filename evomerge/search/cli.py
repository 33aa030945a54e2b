"""`python -m evomerge search [task=...] [models=...] [space=...] [optimizer=...] [evaluator=...]`.

Hydra overrides, e.g. `optimizer.n_trials=50 run=my-run storage=postgresql://u@host/db`.
Running the same command again resumes the run from results/<run>/study.db.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from evomerge.config import compose, dump_config
from evomerge.search.config import search_config
from evomerge.search.loop import run_search, write_text_atomic


def main(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    raw = compose("search", [a for a in argv if a != "--cfg"])
    if "--cfg" in argv:
        print(dump_config(raw))
        return 0
    cfg = search_config(raw)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg.run_dir / "config.yaml", dump_config(raw))
    summary = run_search(cfg)
    print(json.dumps(summary, indent=2))
    print(f"best recipe: {cfg.run_dir / 'best_recipe.yaml'}")
    return 0
