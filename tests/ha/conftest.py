"""The HA rig: the topology of tests/ha/cluster.py with tally's API on its own host and
a worker and beat on another, under the chaos suite's load and checks."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.models import Role
from shared.platform.db import make_engine, make_session_factory
from tests.chaos.conftest import STACK_ENV, Rig
from tests.factories import Factory
from tests.ha.cluster import Cluster, running_cluster
from tests.stack import Stack, wait_until_up

TOOLS = ("patroni", "etcd", "redis-sentinel", "nft", "ip")
API_PORT = 8000


@dataclass
class Database:
    """What the chaos suite's checks and faults need of the database: the URL `tally
    reconcile` uses, and the port tally's connections go to."""

    url: str
    port: int = 5432


@dataclass
class HaRig(Rig):
    cluster: Cluster | None = None

    @property
    def ha(self) -> Cluster:
        assert self.cluster is not None
        return self.cluster


@pytest.fixture
def ha_rig(tmp_path: Path) -> Iterator[HaRig]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the HA suite needs {', '.join(missing)}: run `make tools`")
    if os.geteuid() != 0:
        pytest.fail("the HA suite makes network namespaces: it runs as root")
    with running_cluster(tmp_path / "cluster") as cluster:
        yield from _rig(tmp_path, cluster)


def _rig(tmp_path: Path, cluster: Cluster) -> Iterator[HaRig]:
    engine = make_engine(cluster.database_url, pool_size=2)
    sessions = make_session_factory(engine)
    factory = Factory(sessions)
    caller = factory.caller(Role.MODERATOR)
    user_ids = [factory.user().id for _ in range(12)]
    points_user_ids = [factory.user().id for _ in range(6)]
    quiet_user_id = factory.user().id
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(
        f"http://{cluster.api.address}:{API_PORT}",
        os.environ
        | {
            "TALLY_DATABASE_URL": cluster.database_url,
            "TALLY_REDIS_URL": cluster.redis_url,
            "TALLY_REPLICATION": "required",
            "TALLY_QUEUE_NAME": "tally-ha",
            "TALLY_ENV_FILE": os.devnull,
        }
        | STACK_ENV,
        {},
        logs,
    )
    on_api = ("ip", "netns", "exec", cluster.api.namespace)
    on_work = ("ip", "netns", "exec", cluster.work.namespace)
    stack.start("api", "api", "--bind", f"{cluster.api.address}:{API_PORT}", wrapper=on_api)
    stack.start("beat", "beat", "--schedule", str(logs / "beat-schedule"), wrapper=on_work)
    for name in ("worker1", "worker2"):
        stack.start_worker(name, wrapper=on_work)
    try:
        wait_until_up(stack)
        yield HaRig(
            stack,
            Database(cluster.database_url),  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            sessions,
            caller,
            user_ids,
            points_user_ids,
            quiet_user_id,
            cluster,
        )
    finally:
        stack.stop_all()
        engine.dispose()
