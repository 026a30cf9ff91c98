"""PgBouncer in transaction pooling mode in front of a test PostgreSQL (Debian's
`pgbouncer`, installed by `make tools`): the suite run with TALLY_TEST_PGBOUNCER=1
talks to its database through it, over a few server connections."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from cli.embedded import free_port

# Server connections per database and user: far fewer than the suite's clients (every
# app's pool, each worker's, the relay's...), so that clients do share them.
SERVER_CONNECTIONS = 4


@contextmanager
def pgbouncer(database_url: str) -> Iterator[str]:
    """Start PgBouncer in front of `database_url`'s server; yield the URL through it."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise RuntimeError("pgbouncer is not installed: run `make tools`")
    url = make_url(database_url)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tally-pgbouncer-") as name:
        folder = Path(name)
        (folder / "users.txt").write_text(f'"{url.username}" "{url.password or ""}"\n')
        settings = f"""
[databases]
* = host={url.host or "127.0.0.1"} port={url.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "users.txt"}
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 1000
"""
        if os.geteuid() == 0:
            # PgBouncer will not run as root: it drops to an unprivileged user.
            settings += f"user = {'postgres' if _user_exists('postgres') else 'nobody'}\n"
            for path in (folder, *folder.iterdir()):
                path.chmod(0o755)
        (folder / "pgbouncer.ini").write_text(settings)
        log = folder / "pgbouncer.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [binary, str(folder / "pgbouncer.ini")], stdout=output, stderr=output
            )
        through = url.set(host="127.0.0.1", port=port)
        try:
            _wait_until_up(
                through.set(drivername="postgresql").render_as_string(False), process, log
            )
            yield through.render_as_string(hide_password=False)
        finally:
            process.terminate()
            process.wait(timeout=10)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _wait_until_up(libpq: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {process.returncode}: {log.read_text()}")
        try:
            psycopg.connect(libpq, connect_timeout=1).close()
            return
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise RuntimeError(f"pgbouncer did not answer within 10 s: {log.read_text()}")
