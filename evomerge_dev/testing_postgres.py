"""A throwaway PostgreSQL server for the many-worker tests and scripts/reliability.py.

CI (`.ci/run`) starts one and exports its URL as EVOMERGE_TEST_POSTGRES. Without that variable,
tests start their own from the server binaries when these are installed (Debian's
`postgresql-NN` puts them in /usr/lib/postgresql/NN/bin): initdb into a temporary directory,
listening on 127.0.0.1 only, trust authentication (nothing else can reach it), fsync off. As
root, the server runs as the `postgres` user, which PostgreSQL requires.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_URL = "EVOMERGE_TEST_POSTGRES"


def server_bin_dir() -> Path | None:
    """Directory holding initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/*."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def throwaway_server(bin_dir: Path) -> Iterator[str]:
    """Start a fresh server; yields its admin URL; stops it and deletes its data at exit."""
    root = Path(tempfile.mkdtemp(prefix="evomerge-pg-"))
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", _free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, text=True)

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-N")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
        log = str(root / "server.log")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", log, "-w", "start")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)


def create_database(admin_url: str, prefix: str = "evomerge") -> str:
    """A new empty database on the server of `admin_url`; returns its URL."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    for attempt in range(50):  # a server started a moment ago may still refuse connections
        try:
            con = psycopg2.connect(admin_url)
            break
        except psycopg2.OperationalError:
            if attempt == 49:
                raise
            time.sleep(0.1)
    try:
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        con.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name
