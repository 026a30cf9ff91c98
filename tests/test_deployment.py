"""docker-compose.yml validates, runs the same commands as the Procfile, and is monitored."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = ("api", "worker", "bulk-worker", "events-worker", "beat", "flower")
# The processes that need the migrated database (Flower, from the same image, needs
# only the broker).
TALLY_PROCESSES = ("api", "worker", "bulk-worker", "events-worker", "beat")
WORKERS = ("worker", "bulk-worker", "events-worker")
# Services that run once and exit; every other one is long-running.
ONE_SHOT = ("migrate",)


SECRETS = {
    "POSTGRES_PASSWORD": "s3cret",
    "FLOWER_BASIC_AUTH": "ops:pa55",
    "FLOWER_METRICS_PASSWORD": "scr4pe",
    "GRAFANA_ADMIN_PASSWORD": "gr4fana",
}


def _run_compose_config(
    env: dict[str, str], file: Path = ROOT / "docker-compose.yml"
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "Debian's docker-compose package is needed: apt-get install docker-compose"
    return subprocess.run(
        [binary, "-f", str(file), "config"],
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


def _bind_mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (not its named volumes)."""
    mounts = (volume.split(":") for volume in service.get("volumes", []))
    return {target: Path(source) for source, target, *_ in mounts if source.startswith("/")}


def test_compose_file_validates_with_health_checks_and_dependencies() -> None:
    services = _compose_config()["services"]
    assert set(services) >= {"postgres", "redis", "migrate", *PROCESSES, "prometheus", "grafana"}
    for name in TALLY_PROCESSES:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "ports" not in services["worker"], "workers must scale with --scale worker=N"


def test_every_long_running_service_has_a_health_check_and_the_api_checks_readiness() -> None:
    services = _compose_config()["services"]
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert "/readyz" in api_check and "/healthz" not in api_check
    for name in WORKERS:
        # worker.metrics: 503 unless the worker is connected and the broker answers now.
        assert "127.0.0.1:9808/healthz" in " ".join(services[name]["healthcheck"]["test"]), name


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
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "ops:pa55,prometheus:scr4pe"
    assert services["prometheus"]["environment"]["FLOWER_METRICS_PASSWORD"] == "scr4pe"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "gr4fana"


def _host_address(port: str | dict) -> str:
    """The host address a published port binds to ("" for every interface)."""
    if isinstance(port, dict):
        return str(port.get("host_ip", ""))
    host, _, _ = port.rpartition(":")  # "127.0.0.1:5555:5555/tcp", "8000:8000"
    address, _, _ = host.rpartition(":")
    return address


def test_flower_and_the_api_listen_on_loopback_unless_told_otherwise() -> None:
    """Every published port, the API's (and so its /metrics) included, binds the host's
    loopback; the public way in is a TLS proxy, and Prometheus scrapes on compose's network."""
    services = _compose_config()["services"]
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}
    assert set(published) >= {"api", "flower", "prometheus", "grafana"}
    for name, ports in published.items():
        for port in ports:
            assert _host_address(port) == "127.0.0.1", (name, port)
    procfile = (ROOT / "Procfile").read_text()
    assert "--address=${FLOWER_ADDRESS:-127.0.0.1}" in procfile
    assert "${TALLY_BIND:-127.0.0.1:" in procfile


def test_no_two_containers_share_a_metrics_folder() -> None:
    # prometheus_client names its sample files by PID, and PIDs repeat across containers:
    # every process group keeps its own folder and serves its own /metrics.
    config = _compose_config()
    users: dict[str, list[str]] = {}
    for name, service in config["services"].items():
        assert "PROMETHEUS_MULTIPROC_DIR" not in service.get("environment", {}), name
        for volume in service.get("volumes", []):
            users.setdefault(volume.split(":")[0], []).append(name)
    assert {source: names for source, names in users.items() if len(names) > 1} == {}
    assert set(config.get("volumes", {})) == {"pgdata", "prometheus", "grafana"}


def test_prometheus_scrapes_the_api_and_every_worker_container() -> None:
    services = _compose_config()["services"]
    scrape = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    (api_targets,) = (c["targets"] for c in jobs["tally-api"]["static_configs"])
    assert api_targets == ["api:8000"]
    assert "0.0.0.0:8000" in services["api"]["command"]
    (workers,) = jobs["tally-worker"]["dns_sd_configs"]
    assert sorted(workers["names"]) == sorted(WORKERS) and workers["type"] == "A"
    for name in WORKERS:
        assert services[name]["environment"]["TALLY_METRICS_BIND"] == f"0.0.0.0:{workers['port']}"


def test_prometheus_and_grafana_mount_the_monitoring_files_of_the_repository() -> None:
    services = _compose_config()["services"]
    prometheus = _bind_mounts(services["prometheus"])
    monitoring = ROOT / "monitoring"
    # alerts.yml beside prometheus.yml, where the config's relative rule_files finds it.
    assert prometheus == {
        "/etc/prometheus/prometheus.yml": monitoring / "prometheus.yml",
        "/etc/prometheus/alerts.yml": monitoring / "alerts.yml",
    }
    grafana = _bind_mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == monitoring / "grafana" / "provisioning"
    for host_path in [*prometheus.values(), *grafana.values()]:
        assert host_path.exists(), host_path
    providers = yaml.safe_load(
        (monitoring / "grafana" / "provisioning" / "dashboards" / "tally.yml").read_text()
    )["providers"]
    (dashboards,) = (provider["options"]["path"] for provider in providers)
    assert (grafana[dashboards] / "tally.json").is_file()


HA_SECRETS = {
    "PATRONI_SUPERUSER_PASSWORD": "su",
    "PATRONI_REPLICATION_PASSWORD": "rep",
    "PATRONI_REWIND_PASSWORD": "rew",
}


def test_the_several_machine_compose_file_validates_and_takes_its_secrets() -> None:
    """deploy/compose.yml: three etcd members, three PostgreSQL hosts under Patroni from
    the files tests/ha runs, Redis with three sentinels, and tally on all of them."""
    file = ROOT / "deploy" / "compose.yml"
    result = _run_compose_config(HA_SECRETS, file)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"etcd1", "etcd2", "etcd3", "db1", "db2", "db3", "redis1", "redis2"} <= set(services)
    assert {"sentinel1", "sentinel2", "sentinel3", "migrate", "api", "worker", "beat"} <= set(
        services
    )
    for name in ("api", "worker", "beat", "migrate"):
        environment = services[name]["environment"]
        assert "target_session_attrs=read-write" in environment["TALLY_DATABASE_URL"]
        assert environment["TALLY_DATABASE_URL"].count("host=db") == 3
        assert environment["TALLY_REDIS_URL"].startswith("redis+sentinel://sentinel1:26379,")
        assert environment["TALLY_REPLICATION"] == "required"
    dockerfile = (ROOT / "deploy" / "patroni" / "Dockerfile").read_text()
    assert "COPY patroni.yml post_bootstrap.sh /etc/patroni/" in dockerfile
    patroni = yaml.safe_load((ROOT / "deploy" / "patroni" / "patroni.yml").read_text())
    dcs = patroni["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is True
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
    for missing in HA_SECRETS:
        without = {name: value for name, value in HA_SECRETS.items() if name != missing}
        refused = _run_compose_config(without, file)
        assert refused.returncode != 0 and missing in refused.stderr
