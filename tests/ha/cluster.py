"""The several-machine topology of deploy/, as hosts on this machine (tests/ha/hosts.py).

    etcd   10.77.N.10   etcd, the third Redis Sentinel
    db1    10.77.N.11   Patroni + PostgreSQL (the first primary)
    db2    10.77.N.12   Patroni + PostgreSQL (a standby: synchronous, or ready to be)
    db3    10.77.N.13   Patroni + PostgreSQL (a standby: synchronous, or ready to be)
    redis1 10.77.N.21   Redis (the first master) + Sentinel
    redis2 10.77.N.22   Redis (replica) + Sentinel
    api    10.77.N.31   tally api
    work   10.77.N.41   tally worker, tally beat

Patroni runs deploy/patroni/patroni.yml as shipped, with the per-host values from the
environment as that file says, plus a file of this test's paths. tally reaches
PostgreSQL by a libpq multi-host URL (`target_session_attrs=read-write`) and Redis
through the sentinels.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from redis.sentinel import Sentinel

from tests.ha.hosts import Host, Network

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
POSTGRES_USER = "postgres"
STARTUP_TIMEOUT = 60.0


def postgres_bin() -> Path:
    """The newest PostgreSQL server of Debian's packages (/usr/lib/postgresql/N/bin)."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3])
    )
    if not versions:
        raise RuntimeError("no PostgreSQL server in /usr/lib/postgresql: run `make tools`")
    return versions[-1].parent


def wait_for(what: str, check: object, timeout: float = STARTUP_TIMEOUT) -> object:
    """Call `check` until it returns something true; its last error names the failure."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()  # type: ignore[operator]
            if result:
                return result
        except Exception as error:  # whatever a server not up yet raises
            last = error
        time.sleep(0.2)
    raise TimeoutError(f"{what} within {timeout:.0f} s (last: {last!r})")


@dataclass
class Cluster:
    network: Network
    folder: Path
    etcd: Host
    databases: list[Host]
    redises: list[Host]
    api: Host
    work: Host
    # Each Redis host's sentinel, and the etcd host's.
    sentinel_hosts: list[Host] = field(default_factory=list)

    # Where tally and the test find things.

    @property
    def database_url(self) -> str:
        hosts = "&".join(f"host={db.address}:5432" for db in self.databases)
        return f"postgresql+psycopg://postgres@/tally?{hosts}&target_session_attrs=read-write"

    @property
    def redis_url(self) -> str:
        """The sentinels and the master they watch, as TALLY_REDIS_URL names them."""
        hosts = ",".join(f"{host.address}:26379" for host in self.sentinel_hosts)
        return f"redis+sentinel://{hosts}/tally/0"

    def libpq(self, host: Host, database: str = "tally") -> str:
        return f"host={host.address} port=5432 user=postgres dbname={database} connect_timeout=2"

    def patroni(self, host: Host) -> dict:
        """Patroni's view from `host`'s REST API (`GET /patroni`)."""
        with urllib.request.urlopen(f"http://{host.address}:8008/patroni", timeout=2) as answer:
            return json.loads(answer.read())

    def members(self) -> list[dict]:
        """The cluster's members as Patroni lists them, asked of any host that answers."""
        for host in self.databases:
            try:
                with urllib.request.urlopen(
                    f"http://{host.address}:8008/cluster", timeout=2
                ) as answer:
                    return json.loads(answer.read())["members"]
            except (OSError, urllib.error.URLError):
                continue
        return []

    def primary(self) -> Host:
        """The host Patroni names leader (waits for one)."""
        by_name = {host.name: host for host in self.databases}

        def leader() -> Host | None:
            for member in self.members():
                if member["role"] == "leader" and member["state"] == "running":
                    return by_name[member["name"]]
            return None

        return wait_for("a Patroni leader", leader)  # type: ignore[return-value]

    def wait_sync_standby(self, timeout: float = STARTUP_TIMEOUT) -> Host:
        """The synchronous standby, once there is one streaming."""
        by_name = {host.name: host for host in self.databases}

        def standby() -> Host | None:
            for member in self.members():
                if member["role"] == "sync_standby" and member["state"] in ("running", "streaming"):
                    return by_name[member["name"]]
            return None

        return wait_for("a synchronous standby", standby, timeout)  # type: ignore[return-value]

    def wait_replicas(self, count: int, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until `count` standbys stream from the primary, one of them synchronous."""

        def streaming() -> bool:
            members = self.members()
            standbys = [m for m in members if m["role"] in ("replica", "sync_standby")]
            return len(
                [m for m in standbys if m["state"] in ("running", "streaming")]
            ) >= count and any(m["role"] == "sync_standby" for m in standbys)

        wait_for(f"{count} standbys streaming", streaming, timeout)

    def redis_master(self) -> Host:
        """The Redis host the sentinels name master."""
        by_address = {host.address: host for host in self.redises}
        sentinel = Sentinel([(h.address, 26379) for h in self.sentinel_hosts], socket_timeout=1)
        address, _ = sentinel.discover_master("tally")
        return by_address[address]

    # Starting the hosts' services.

    def start_etcd(self) -> None:
        data = self.folder / "etcd"
        address = self.etcd.address
        self.etcd.spawn(
            [
                "etcd",
                "--name=etcd",
                f"--data-dir={data}",
                f"--listen-client-urls=http://{address}:2379",
                f"--advertise-client-urls=http://{address}:2379",
                f"--listen-peer-urls=http://{address}:2380",
                f"--initial-advertise-peer-urls=http://{address}:2380",
                f"--initial-cluster=etcd=http://{address}:2380",
            ],
            self.folder / "etcd.log",
        )

    def start_patroni(self, host: Host) -> None:
        folder = self.folder / host.name
        folder.mkdir(exist_ok=True)
        shutil.chown(folder, POSTGRES_USER)
        local = folder / "local.yml"
        # Sockets in the host's own folder: the machine's PostgreSQL has /var/run/postgresql.
        local.write_text(
            f"postgresql:\n  parameters:\n    unix_socket_directories: '{folder}'\n"
            f"bootstrap:\n  post_bootstrap: {DEPLOY / 'patroni' / 'post_bootstrap.sh'}\n"
        )
        config = folder / "config"
        config.mkdir(exist_ok=True)
        shutil.copy(DEPLOY / "patroni" / "patroni.yml", config / "00-patroni.yml")
        shutil.copy(local, config / "10-local.yml")
        env = {
            "PATH": os.environ["PATH"],
            "PATRONI_NAME": host.name,
            "PATRONI_RESTAPI_LISTEN": f"{host.address}:8008",
            "PATRONI_RESTAPI_CONNECT_ADDRESS": f"{host.address}:8008",
            "PATRONI_POSTGRESQL_LISTEN": f"{host.address}:5432",
            "PATRONI_POSTGRESQL_CONNECT_ADDRESS": f"{host.address}:5432",
            "PATRONI_POSTGRESQL_DATA_DIR": str(folder / "data"),
            "PATRONI_POSTGRESQL_BIN_DIR": str(postgres_bin()),
            "PATRONI_POSTGRESQL_PGPASS": str(folder / "pgpass"),
            "PATRONI_ETCD3_HOSTS": f"{self.etcd.address}:2379",
            "PATRONI_LOG_LEVEL": "INFO",
        }
        host.spawn(["patroni", str(config)], folder / "patroni.log", env=env, user=POSTGRES_USER)

    def start_redis(self, host: Host, replica_of: Host | None) -> None:
        folder = self.folder / host.name
        folder.mkdir(exist_ok=True)
        # Its own copy: a failover has Redis rewrite its configuration file.
        config = folder / "redis.conf"
        shutil.copy(DEPLOY / "redis" / "redis.conf", config)
        argv = [
            "redis-server",
            str(config),
            "--bind",
            host.address,
            "--dir",
            str(folder),
        ]
        if replica_of is not None:
            argv += ["--replicaof", replica_of.address, "6379"]
        host.spawn(argv, folder / "redis.log")

    def start_sentinel(self, host: Host, master: Host) -> None:
        folder = self.folder / host.name
        folder.mkdir(exist_ok=True)
        config = folder / "sentinel.conf"
        template = string.Template((DEPLOY / "redis" / "sentinel.conf").read_text())
        config.write_text(template.substitute(MASTER=master.address))
        host.spawn(
            ["redis-sentinel", str(config), "--bind", host.address, "--dir", str(folder)],
            folder / "sentinel.log",
        )
        if host not in self.sentinel_hosts:
            self.sentinel_hosts.append(host)

    def prepare_database(self) -> None:
        """Migrate the `tally` database (deploy/patroni/post_bootstrap.sh made it)."""
        subprocess.run(
            [sys.executable, "-m", "cli", "db", "upgrade"],
            env=os.environ
            | {"TALLY_DATABASE_URL": self.database_url, "TALLY_ENV_FILE": os.devnull},
            check=True,
            capture_output=True,
        )


@contextmanager
def running_cluster(folder: Path) -> Iterator[Cluster]:
    """The servers of the topology up (PostgreSQL with a synchronous standby, Redis with a
    replica and three sentinels); tally's own processes are the caller's to start."""
    folder.mkdir(parents=True, exist_ok=True)
    # Patroni runs as the postgres user: it must reach its folder.
    for part in [folder, *folder.parents]:
        if part != Path("/"):
            part.chmod(part.stat().st_mode | 0o011)
    network = Network()
    try:
        cluster = Cluster(
            network,
            folder,
            etcd=network.host("etcd", 10),
            databases=[network.host(f"db{n}", 10 + n) for n in (1, 2, 3)],
            redises=[network.host("redis1", 21), network.host("redis2", 22)],
            api=network.host("api", 31),
            work=network.host("work", 41),
        )
        cluster.start_etcd()
        wait_for("etcd", lambda: _answers(f"http://{cluster.etcd.address}:2379/health"))
        first, *standbys = cluster.databases
        cluster.start_patroni(first)
        wait_for(
            "the first primary", lambda: cluster.patroni(first)["role"] in ("master", "primary")
        )
        for standby in standbys:
            cluster.start_patroni(standby)
        cluster.wait_replicas(len(standbys))
        master, replica = cluster.redises
        cluster.start_redis(master, None)
        cluster.start_redis(replica, master)
        for host in (master, replica, cluster.etcd):
            cluster.start_sentinel(host, master)
        wait_for("the Redis replica in sync", lambda: _redis_replicas(master) >= 1)
        # Each sentinel must know the others and the replica before the master may fail:
        # a sentinel learns of replicas from the master's INFO, every ten seconds.
        wait_for(
            "the sentinels' view", lambda: all(_sentinel_sees(h) for h in cluster.sentinel_hosts)
        )
        cluster.prepare_database()
        yield cluster
    finally:
        network.close()


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as answer:
        return bool(answer.status == 200)


def _redis_replicas(master: Host) -> int:
    client = Redis(host=master.address, port=6379, socket_timeout=1)
    try:
        return int(client.info("replication")["connected_slaves"])
    finally:
        client.close()


def _sentinel_sees(host: Host) -> bool:
    """Whether the sentinel on `host` knows the two other sentinels and a replica."""
    client = Redis(host=host.address, port=26379, socket_timeout=1, decode_responses=True)
    try:
        master = client.sentinel_master("tally")
        return int(master["num-other-sentinels"]) >= 2 and int(master["num-slaves"]) >= 1
    finally:
        client.close()
