"""deploy/ is checked by parsing it (no Docker engine here): every service's
command is one this code base accepts and the README shows, every variable it
sets is one the settings know, and each service gets only the secrets it reads.

Kubernetes manifests: tests/test_deploy_k8s.py; dashboard, alert rules and
Prometheus: tests/test_deploy_monitoring.py; lock files: tests/test_deploy_lock.py.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from ops.cli import build_parser
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
README = (ROOT / "README.md").read_text()

# Images we build from this repository (the others are stock images).
OUR_SERVICES = {"worker", "flower", "sandbox"}


def setting_variables() -> set[str]:
    """Every GRANTS_* variable Settings reads."""
    return {f"GRANTS_{name.upper()}" for name in Settings.model_fields}


def known_variables() -> set[str]:
    """What a deploy file may set: the settings."""
    return setting_variables()


def secrets_read_by(env: dict[str, str], secret_dir: str) -> set[str]:
    """Names of the files under ``secret_dir`` that the *_FILE variables of ``env`` point at."""
    prefix = secret_dir.rstrip("/") + "/"
    return {
        value[len(prefix) :] for key, value in env.items() if key.endswith("_FILE") and str(value).startswith(prefix)
    }


def dockerfile_instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def test_compose_has_the_services():
    assert set(SERVICES) == {"redis", "worker", "flower", "sandbox", "prometheus", "grafana"}


def test_redis_never_evicts():
    assert "--maxmemory-policy noeviction" in SERVICES["redis"]["command"]


def test_redis_keeps_an_append_only_file():
    command = SERVICES["redis"]["command"]
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command


@pytest.mark.parametrize("service", ["worker", "flower", "sandbox"])
def test_each_command_is_the_one_the_readme_shows(service):
    assert SERVICES[service]["command"] in README


def test_worker_and_flower_commands_load_this_app():
    import worker

    for service, role in (("worker", "worker"), ("flower", "flower")):
        argv = shlex.split(SERVICES[service]["command"])
        assert argv[:4] == ["celery", "-A", "worker", role]
    assert worker.app.main == "grants"
    import flower  # noqa: F401  (installed with the package)


def test_sandbox_command_parses_with_the_cli():
    argv = shlex.split(SERVICES["sandbox"]["command"])
    assert argv[0] == "grants"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "sandbox" and args.port == 8900 and args.host == "0.0.0.0"


def test_flower_requires_basic_auth():
    env = SERVICES["flower"]["environment"]
    assert env["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


@pytest.mark.parametrize("service", sorted(OUR_SERVICES))
def test_every_grants_variable_is_a_setting(service):
    env = SERVICES[service]["environment"]
    grants_vars = {k for k in env if k.startswith("GRANTS_")}
    assert grants_vars and grants_vars <= known_variables(), grants_vars - known_variables()


def test_no_secret_values_in_compose():
    plain = {"GRANTS_XSOLLA_API_KEY", "GRANTS_PLAYFAB_SECRET_KEY", "GRANTS_BACKPACK_TOKEN"}
    readers = 0
    for service in SERVICES.values():
        env = service.get("environment") or {}
        assert not plain & set(env), "credentials come from secret files, not the environment"
        key_file = env.get("GRANTS_XSOLLA_API_KEY_FILE")
        if key_file:
            readers += 1
            assert key_file == "/run/secrets/xsolla_api_key"
            assert "xsolla_api_key" in service.get("secrets", [])
    assert readers == 2  # worker, sandbox: Flower gets no backend credential


def test_each_service_gets_only_the_secrets_it_reads():
    """A service has a secret exactly when one of its *_FILE variables names it."""
    for name, service in SERVICES.items():
        env = service.get("environment") or {}
        granted = set(service.get("secrets", []))
        assert granted == secrets_read_by(env, "/run/secrets"), name
        assert granted <= set(COMPOSE["secrets"]), name
    assert not SERVICES["flower"].get("secrets")
    assert not any(
        "XSOLLA" in key or "PLAYFAB" in key or "BACKPACK" in key for key in SERVICES["flower"]["environment"]
    )


def test_every_declared_secret_is_used_and_git_ignored():
    used = {s for service in SERVICES.values() for s in service.get("secrets", [])}
    assert used == set(COMPOSE["secrets"])
    ignore = (ROOT / "deploy" / "secrets" / ".gitignore").read_text().split()
    assert ignore[0] == "*"  # the secret files themselves are never committed
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./secrets/")


def test_published_ports_are_on_loopback_only():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert SERVICES["flower"]["ports"] == ["127.0.0.1:5555:5555"]


def test_workers_serve_metrics_where_prometheus_scrapes():
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "grants-worker"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"]
    assert str(sd["port"]) == SERVICES["worker"]["environment"]["GRANTS_METRICS_PORT"]


def host_mounts(service: str) -> dict[str, Path]:
    """Container path -> repository path of a service's bind mounts."""
    mounts = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (ROOT / "deploy" / source).resolve()
    return mounts


def test_monitoring_mounts_exist_in_the_repository():
    prometheus = host_mounts("prometheus")
    assert (prometheus["/etc/prometheus"] / "prometheus.yml").is_file()
    assert (prometheus["/etc/prometheus"] / "alerts.yml").is_file()
    grafana = host_mounts("grafana")
    assert grafana and all(path.is_dir() for path in grafana.values())
    provisioning = grafana["/etc/grafana/provisioning"]
    datasources = list((provisioning / "datasources").glob("*.yml"))
    providers = list((provisioning / "dashboards").glob("*.yml"))
    assert datasources and providers
    # The provider reads the directory compose mounts the dashboards into.
    for provider_file in providers:
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            mounted = grafana[provider["options"]["path"]]
            assert list(mounted.glob("*.json")), provider_file
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    directory, _, name = home.rpartition("/")
    assert (grafana[directory] / name).is_file()
    # The datasource the dashboard uses is the provisioned one, at Prometheus's address.
    (datasource,) = [d for f in datasources for d in yaml.safe_load(f.read_text())["datasources"]]
    dashboard = json.loads((grafana[directory] / name).read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == datasource["uid"]
    assert datasource["url"] == "http://prometheus:9090"


def test_dockerfile_installs_the_packages_and_runs_the_worker():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    copied = {rest.split()[0] for word, rest in instructions if word == "COPY"}
    assert {"worker", "producers", "schemas", "sandbox"} <= copied
    assert any(word == "RUN" and "pip install" in rest for word, rest in instructions)
    (cmd,) = [rest for word, rest in instructions if word == "CMD"]
    assert " ".join(json.loads(cmd)) == SERVICES["worker"]["command"]
    assert any(word == "USER" for word, _ in instructions)
