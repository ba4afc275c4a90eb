"""The Grafana dashboard, the Prometheus alert rules and scrape config in deploy/.

Every metric they query must be one the worker exports (worker/metrics.py).
The rules are compiled and unit-tested with ``promtool`` when it is on PATH
(``make venv`` installs Debian's ``prometheus`` package where it can); without
it they are still parsed and checked here, and the test says so.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import yaml

from ops.cli import build_parser
from worker.metrics import METRICS as CONTRACT
from worker.metrics import SHARED

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
DASHBOARD = json.loads((DEPLOY / "grafana" / "dashboards" / "grants.json").read_text())
RULES_FILE = DEPLOY / "prometheus" / "alerts.yml"
RULES = yaml.safe_load(RULES_FILE.read_text())
ALERTS = [rule for group in RULES["groups"] for rule in group["rules"] if "alert" in rule]
PROMTOOL = shutil.which("promtool")

# The metrics contract: what the worker exports (worker/metrics.py); the
# shared-state ones come from the leader only.
METRICS: dict[str, str] = CONTRACT
SHARED_METRICS = set(SHARED)
# Series Prometheus makes itself.
PROMETHEUS_SERIES = {"up"}
JOB = "grants-worker"


def series_names() -> set[str]:
    """Every series name a query may use: histograms as _bucket, _sum, _count."""
    names = set(PROMETHEUS_SERIES)
    for name, kind in METRICS.items():
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


def base_metric(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and METRICS.get(series[: -len(suffix)]) == "histogram":
            return series[: -len(suffix)]
    return series


_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "inf",
    "nan",
    "group_left",
    "group_right",
    "on",
    "ignoring",
    "by",
    "without",
    "offset",
}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, label names,
    strings, ranges and grouping clauses removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0).lower() not in _KEYWORDS:
            names.add(match.group(0))
    return names


def dashboard_panels() -> list[dict]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def as_prometheus_expr(expr: str) -> str:
    """A dashboard query as Prometheus itself takes it (Grafana's variables filled)."""
    return expr.replace("$__rate_interval", "5m").replace("$project", ".*")


# --- metric names --------------------------------------------------------------


def test_metric_name_extraction():
    expr = (
        "histogram_quantile(0.99, sum by (le, backend) (max without (instance, pod) "
        '(rate(grants_purchase_to_outcome_seconds_bucket{project=~"$project"}[$__rate_interval]))))'
        ' / on () group_left count(up{job="grants-worker"} == 1) > 150 * 0.200'
        " unless grants_failed offset 10m"
    )
    assert metric_names(expr) == {"grants_purchase_to_outcome_seconds_bucket", "up", "grants_failed"}


def test_contract_follows_prometheus_conventions():
    for name, kind in METRICS.items():
        assert re.fullmatch(r"grants_[a-z0-9_]+", name), name
        assert name.endswith("_total") == (kind == "counter"), name
    assert set(METRICS) >= SHARED_METRICS


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_queried_metric_is_in_the_contract(source):
    exprs = dashboard_queries() if source == "dashboard" else [rule["expr"] for rule in ALERTS]
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"selects no metric: {expr}"
        assert names <= series_names(), f"not in the contract: {names - series_names()} in {expr}"


def test_shared_metrics_survive_a_change_of_leader():
    """A shared-state series is exported by the leader only: every query on it
    aggregates the instance (and pod) away, so a new leader continues the line."""
    for expr in dashboard_queries() + [rule["expr"] for rule in ALERTS]:
        shared = {base_metric(n) for n in metric_names(expr)} & SHARED_METRICS
        if shared and "grants_leader == 1" not in expr.replace(" ", " "):
            assert "without (instance, pod)" in expr, expr


def test_dashboard_shows_what_issue_11_asks_for():
    queried = {base_metric(n) for expr in dashboard_queries() for n in metric_names(expr)}
    assert set(METRICS) <= queried, f"not on the dashboard: {set(METRICS) - queried}"
    queries = " ".join(dashboard_queries())
    assert "histogram_quantile(0.5," in queries and "histogram_quantile(0.99," in queries
    assert "grants_purchase_to_outcome_seconds_bucket" in queries


def test_dashboard_is_well_formed():
    assert DASHBOARD["uid"] and DASHBOARD["title"]
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert _balanced(target["expr"]), target["expr"]
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    used = set(re.findall(r"\$(\w+)", json.dumps([p["targets"] for p in dashboard_panels()])))
    assert used - {"__rate_interval"} <= variables


# --- alert rules ----------------------------------------------------------------


def _balanced(expr: str) -> bool:
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                return False
    return not any(depth.values())


def test_rules_parse_and_say_what_to_do():
    """The checks that hold with or without promtool."""
    names = [rule["alert"] for rule in ALERTS]
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in ALERTS:
        assert rule["expr"].strip() and _balanced(rule["expr"]), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]
    assert {rule["labels"]["severity"] for rule in ALERTS} >= {"critical", "warning"}


def test_rules_cover_issue_11():
    by_metric: dict[str, list[str]] = {}
    for rule in ALERTS:
        for name in metric_names(rule["expr"]):
            by_metric.setdefault(base_metric(name), []).append(rule["alert"])
    for needed in (
        "grants_in_doubt",
        "grants_failed",
        "grants_oldest_waiting_seconds",
        "grants_ingest_lag_entries",
        "up",
        "grants_backend_calls_total",
        "grants_redis_memory_used_bytes",
        "grants_redis_memory_max_bytes",
    ):
        assert needed in by_metric, needed
    assert any(r["expr"].startswith("absent(up{") for r in ALERTS)
    (waiting,) = [r for r in ALERTS if r["alert"] == "GrantsCommandsWaitingTooLong"]
    # N x the 200 ms default flush interval, spelled out in the expression.
    assert "* 0.200" in waiting["expr"]


def rendered_commands(text: str) -> list[list[str]]:
    """The `grants ...` commands an annotation points at, its templates filled."""
    text = re.sub(r"\{\{\s*\$labels\.project\s*\}\}", "44056", text)
    text = re.sub(r"\{\{\s*\$labels\.kind\s*\}\}", "grant", text)
    return [shlex.split(cmd) for cmd in re.findall(r"`(grants [^`]+)`", text)]


def test_every_command_an_alert_points_at_parses():
    parser = build_parser()
    seen = set()
    for rule in ALERTS:
        for argv in rendered_commands(rule["annotations"]["description"]):
            args = parser.parse_args(argv[1:])
            seen.add(args.command)
    assert {"results", "replay"} <= seen
    described = " ".join(r["annotations"]["description"] for r in ALERTS)
    assert "grants results list --status in_doubt" in described
    assert "grants replay --status failed" in described


def test_rules_use_the_scrape_job():
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert JOB in {job["job_name"] for job in prometheus["scrape_configs"]}
    assert prometheus["rule_files"] == ["alerts.yml"]  # next to prometheus.yml
    for rule in ALERTS:
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job == JOB


# --- promtool ---------------------------------------------------------------------


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None  # callers skip without it
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_rules_and_config_compile():
    """promtool compiles the rules and the scrape config; without it, say so
    (the parse checks above still ran)."""
    if PROMTOOL is None:
        warnings.warn("promtool not on PATH: alert rules parsed and checked, not compiled")
        assert ALERTS
        return
    rules = promtool("check", "rules", str(RULES_FILE), cwd=ROOT)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = promtool("check", "config", "prometheus.yml", cwd=DEPLOY / "prometheus")
    assert config.returncode == 0, config.stdout + config.stderr


def test_dashboard_queries_compile(tmp_path):
    """Every dashboard query is valid PromQL: promtool compiles them as recording rules."""
    if PROMTOOL is None:
        warnings.warn("promtool not on PATH: dashboard queries checked for balance only")
        assert all(_balanced(q) for q in dashboard_queries())
        return
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_prometheus_expr(expr)}
        for i, expr in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# Scenarios for `promtool test rules`. Annotations are stripped from the rules
# under test (test_every_command_an_alert_points_at_parses checks them), so a
# scenario states the alert's labels only. Series from instance "a" ending with
# `stale` and continuing on "b" is a change of leader.
W = f'job="{JOB}"'
LANE = 'kind="grant",project="44056"'
SCENARIOS = [
    # in_doubt grows across a change of leader: fires once, not per worker.
    (
        "GrantsInDoubtGrew",
        "15m",
        [
            (f'grants_in_doubt{{{W},instance="a:9808",{LANE}}}', "0x9 stale"),
            (f'grants_in_doubt{{{W},instance="b:9808",{LANE}}}', "_x9 3x10"),
        ],
        [{"severity": "critical", "job": JOB, "kind": "grant", "project": "44056"}],
    ),
    # A leader change alone (same value) is not growth.
    (
        "GrantsInDoubtGrew",
        "15m",
        [
            (f'grants_in_doubt{{{W},instance="a:9808",{LANE}}}', "2x9 stale"),
            (f'grants_in_doubt{{{W},instance="b:9808",{LANE}}}', "_x9 2x10"),
        ],
        [],
    ),
    # Failed appearing on a lane never seen before.
    (
        "GrantsFailedGrew",
        "15m",
        [(f'grants_failed{{{W},instance="a:9808",{LANE}}}', "_x9 4x10")],
        [{"severity": "warning", "job": JOB, "kind": "grant", "project": "44056"}],
    ),
    # 31 s old for 6 minutes: above 150 x 200 ms.
    (
        "GrantsCommandsWaitingTooLong",
        "10m",
        [(f'grants_oldest_waiting_seconds{{{W},instance="a:9808",{LANE}}}', "1x3 31x10")],
        [{"severity": "warning", "job": JOB, "kind": "grant", "project": "44056"}],
    ),
    (
        "GrantsCommandsWaitingTooLong",
        "10m",
        [(f'grants_oldest_waiting_seconds{{{W},instance="a:9808",{LANE}}}', "29x10")],
        [],
    ),
    # No worker answers.
    (
        "GrantsNoWorkerUp",
        "5m",
        [(f'up{{{W},instance="a:9808"}}', "0x10"), (f'up{{{W},instance="b:9808"}}', "0x10")],
        [{"severity": "critical"}],
    ),
    (
        "GrantsNoWorkerUp",
        "5m",
        [(f'up{{{W},instance="a:9808"}}', "0x10"), (f'up{{{W},instance="b:9808"}}', "1x10")],
        [],
    ),
    # Ingestion falls further behind for 10 minutes.
    (
        "GrantsIngestLagGrowing",
        "20m",
        [
            (f'grants_ingest_lag_entries{{{W},instance="a:9808"}}', "1000+500x30"),
            (f'grants_ingest_lag_seconds{{{W},instance="a:9808"}}', "60x30"),
        ],
        [{"severity": "warning", "job": JOB}],
    ),
    # 10 % of Xsolla calls time out.
    (
        "GrantsBackendErrorRatioHigh",
        "20m",
        [
            (
                f'grants_backend_calls_total{{{W},instance="a:9808",backend="xsolla",endpoint="purchase",status_class="2xx"}}',
                "0+540x30",
            ),
            (
                f'grants_backend_calls_total{{{W},instance="a:9808",backend="xsolla",endpoint="purchase",status_class="timeout"}}',
                "0+60x30",
            ),
        ],
        [{"severity": "warning", "backend": "xsolla"}],
    ),
    # Redis at 90 % of maxmemory; no limit (0) never fires.
    (
        "GrantsRedisMemoryNearLimit",
        "10m",
        [
            (f'grants_redis_memory_used_bytes{{{W},instance="a:9808"}}', "900x10"),
            (f'grants_redis_memory_max_bytes{{{W},instance="a:9808"}}', "1000x10"),
        ],
        [{"severity": "critical", "job": JOB}],
    ),
    (
        "GrantsRedisMemoryNearLimit",
        "10m",
        [
            (f'grants_redis_memory_used_bytes{{{W},instance="a:9808"}}', "900x10"),
            (f'grants_redis_memory_max_bytes{{{W},instance="a:9808"}}', "0x10"),
        ],
        [],
    ),
]


def test_alerts_fire_when_they_should(tmp_path):
    if PROMTOOL is None:
        pytest.skip("promtool not on PATH: rule scenarios need it (the rules were parsed above)")
    stripped = {
        "groups": [
            {**group, "rules": [{k: v for k, v in rule.items() if k != "annotations"} for rule in group["rules"]]}
            for group in RULES["groups"]
        ]
    }
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(stripped))
    tests = [
        {
            "interval": "1m",
            "input_series": [{"series": series, "values": values} for series, values in inputs],
            "alert_rule_test": [
                {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": labels} for labels in expected]}
            ],
        }
        for alert, at, inputs, expected in SCENARIOS
    ]
    (tmp_path / "alerts_test.yml").write_text(
        yaml.safe_dump({"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests})
    )
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
