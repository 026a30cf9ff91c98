"""monitoring/: promtool accepts the rules and the config, every alert has its unit tests,
and the rules and the dashboard ask only for metrics tally exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from flower.events import PrometheusMetrics
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import shared.platform.metrics
from shared.flow.backlog import Outbox
from shared.platform.metrics import BacklogCollector, BuildInfo, GroupProcesses
from shared.platform.replication import ReplicationWatch

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "tally.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# Words of PromQL that look like metric names; function names are recognised by their "(".
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def _promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make tools` installs it (Debian package prometheus)"
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard_targets() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target for panel in _panels(dashboard["panels"]) for target in panel.get("targets", [])]


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana's $variables left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\$\w+", "", expr)
    # Label matchers, range durations, and the label lists of by/without/on/ignoring/group_*.
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = re.findall(r"(?<![\w.:])[a-zA-Z_:][\w:]*(?![\w:]|\s*\()", expr)
    return set(words) - PROMQL_KEYWORDS


def _exported_names() -> set[str]:
    """Every sample name tally's /metrics and Flower's can expose, plus Prometheus's
    own `up`."""
    with mock.patch.object(REGISTRY, "register"):  # Flower's metrics, made but not kept
        flower = vars(PrometheusMetrics()).values()
    families = [
        family
        for metric in [*vars(shared.platform.metrics).values(), *flower]
        if isinstance(metric, MetricWrapperBase)
        for family in metric.describe()
    ]
    families += list(GroupProcesses().collect()) + list(BuildInfo().collect())
    backlog = BacklogCollector(lambda: {"tally": 0}, lambda: Outbox(0, 0.0))
    families += list(backlog.collect())
    # Watched, it reports (0: its engine, none here, cannot be read).
    families += list(ReplicationWatch(None, "preferred").collect())  # type: ignore[arg-type]
    names = {
        family.name + suffix
        for family in families
        for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))
    }
    return names | {"up"}


def test_promtool_accepts_the_alert_rules() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_prometheus_config_and_its_rule_files() -> None:
    # From monitoring/, where prometheus.yml finds alerts.yml as it does in the container.
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    cases = [case for test in tests["tests"] for case in test["alert_rule_test"]]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    stays_quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    alerts = {rule["alert"] for rule in _alert_rules()}
    assert alerts - fires == set(), "alerts without a test where they fire"
    assert alerts - stays_quiet == set(), "alerts without a test where they stay quiet"


def test_every_alert_says_how_bad_and_what_happened() -> None:
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule.get("for"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_every_alert_links_its_section_of_the_runbook() -> None:
    """Issue 24: `runbook_url` on every alert, to a section of docs/runbook.md."""
    runbook = (MONITORING.parent / "docs" / "runbook.md").read_text()
    sections = {line.removeprefix("## ").lower() for line in runbook.splitlines()
                if line.startswith("## ")}  # fmt: skip
    latency = {"TallyAcceptLatencyHigh", "TallyApplyLatencyHigh"}
    assert latency <= {rule["alert"] for rule in _alert_rules()}
    for rule in _alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url == "https://tally.dev/runbook#" + rule["alert"].lower(), rule["alert"]
        assert rule["alert"].lower() in sections, rule["alert"]


def test_rules_and_dashboard_use_only_metrics_tally_exports() -> None:
    exported = _exported_names()
    used = {
        ("alerts.yml", rule["alert"], name)
        for rule in _alert_rules()
        for name in _metric_names(rule["expr"])
    } | {
        ("tally.json", target["refId"], name)
        for target in _dashboard_targets()
        for name in _metric_names(target["expr"])
    }
    assert {name for *_, name in used} >= {"tally_outbox_oldest_age_seconds", "up"}
    assert sorted(use for use in used if use[2] not in exported) == []


def test_dashboard_expressions_parse_and_use_the_chosen_datasource(tmp_path: Path) -> None:
    targets = _dashboard_targets()
    assert targets
    # promtool parses recording rules: one per panel query, Grafana's interval made concrete.
    rules = [
        {"record": f"dashboard:query_{index}", "expr": t["expr"].replace("$__rate_interval", "1m")}
        for index, t in enumerate(targets)
    ]
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    result = _promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    # Issue 24: the data source is a variable (any Prometheus, not only compose's), and
    # every query is filtered by the job and instance variables.
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    assert {"job", "instance"} <= set(variables)
    panels = [p for p in _panels(dashboard["panels"]) if "targets" in p]
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"], target["expr"]
            assert 'instance=~"$instance"' in target["expr"], target["expr"]


def test_the_metric_name_check_sees_through_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(tally_x_bucket{route!~"/a|b"}'
        "[$__rate_interval]))) / on (route) group_left sum(tally_y_total offset 5m) "
        'or vector(0) and absent(up{job="tally-worker"} == 1)'
    )
    assert _metric_names(expr) == {"tally_x_bucket", "tally_y_total", "up"}
