"""docker-compose.yml validates, and it runs the same commands as the Procfile."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = ("api", "worker", "bulk-worker", "beat", "flower")


SECRETS = {"POSTGRES_PASSWORD": "s3cret", "FLOWER_BASIC_AUTH": "ops:pa55"}


def _run_compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "Debian's docker-compose package is needed: apt-get install docker-compose"
    return subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": os.environ["PATH"], **env},
    )


def _compose_config() -> dict:
    result = _run_compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {
        name.strip(): shlex.split(command)
        for name, _, command in (line.partition(":") for line in lines if line.strip())
    }


def test_compose_file_validates_with_health_checks_and_dependencies() -> None:
    services = _compose_config()["services"]
    assert set(services) >= {"postgres", "redis", "migrate", *PROCESSES}
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], name
    for name in PROCESSES:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert "ports" not in services["worker"], "workers must scale with --scale worker=N"


def test_compose_and_procfile_run_the_same_programs() -> None:
    services = _compose_config()["services"]
    procfile = _procfile()
    assert set(procfile) == set(PROCESSES)
    for name in PROCESSES:
        compose_command = services[name]["command"]
        # The same program and subcommand; only addresses and ports differ.
        assert compose_command[:2] == procfile[name][:2], name


def test_compose_takes_its_secrets_from_the_environment() -> None:
    for missing in SECRETS:
        result = _run_compose_config({k: v for k, v in SECRETS.items() if k != missing})
        assert result.returncode != 0 and missing in result.stderr, missing
    services = _compose_config()["services"]
    assert "s3cret" in services["api"]["environment"]["TALLY_DATABASE_URL"]
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "ops:pa55"


def test_flower_and_the_api_listen_on_loopback_unless_told_otherwise() -> None:
    services = _compose_config()["services"]
    (flower_port,) = services["flower"]["ports"]
    published = flower_port if isinstance(flower_port, str) else flower_port.get("host_ip")
    assert str(published).startswith("127.0.0.1"), flower_port
    procfile = (ROOT / "Procfile").read_text()
    assert "--address=${FLOWER_ADDRESS:-127.0.0.1}" in procfile
    assert "${TALLY_BIND:-127.0.0.1:" in procfile
