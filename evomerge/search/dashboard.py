"""`python -m evomerge dashboard results/<run> [--port 8080]`: serve the run's Optuna study in
optuna-dashboard (`pip install -e ".[dashboard]"`), from the storage its config.yaml names
(SQLite by default, or the PostgreSQL study that several workers share), on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evomerge.cli_args import make_parser
from evomerge.errors import SearchError
from evomerge.search.run_files import read_run

# Loopback only: the dashboard can also write to the study (notes, tells, deleting studies),
# so it is not offered to the network; reach it from elsewhere through an SSH tunnel.
HOST = "127.0.0.1"
DEFAULT_PORT = 8080  # optuna-dashboard's own default


def run_storage(run_dir: Path) -> tuple[str, str]:
    """(storage URL, study name) of a search run directory, from its config.yaml, read and
    checked as the search reads it (evomerge/search/run_files.py)."""
    run = read_run(run_dir)
    return run.storage, run.cfg.run


def make_server(storage: str, port: int) -> Any:
    """optuna-dashboard's WSGI app under a wsgiref server on HOST:port (not yet serving)."""
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise SearchError(
            "optuna-dashboard is not installed; install it with: pip install -e '.[dashboard]'"
        ) from None
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # one line per request: noise
            pass

    try:
        return make_server(HOST, port, wsgi(storage), handler_class=QuietHandler)
    except OSError as e:
        raise SearchError(f"--port {port}: cannot listen on {HOST}:{port} ({e.strerror})") from None


def main(argv: Sequence[str]) -> int:
    p = make_parser("python -m evomerge dashboard", __doc__)
    p.add_argument("run_dir", type=Path, help="a search run directory, e.g. results/<run>")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (8080)")
    args = p.parse_args(list(argv))
    if not 0 <= args.port <= 65535:
        raise SearchError(f"--port: must be in [0, 65535], got {args.port}")
    storage, study = run_storage(args.run_dir)
    server = make_server(storage, args.port)
    print(
        f"study {study!r} at http://{HOST}:{server.server_port}/dashboard (Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
