"""deploy/ is checked by parsing it (no Docker engine here): every service's
command is one this code base accepts and the README shows, and every
variable it sets is one the settings know."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from producers.cli import build_parser
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
README = (ROOT / "README.md").read_text()


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


def test_compose_has_the_four_services():
    assert set(SERVICES) == {"redis", "worker", "flower", "sandbox"}


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


@pytest.mark.parametrize("service", ["worker", "flower", "sandbox"])
def test_every_grants_variable_is_a_setting(service):
    fields = {f"GRANTS_{name.upper()}" for name in Settings.model_fields}
    env = SERVICES[service]["environment"]
    grants_vars = {k for k in env if k.startswith("GRANTS_")}
    assert grants_vars and grants_vars <= fields


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
    assert readers == 3  # worker, flower, sandbox


def test_dockerfile_installs_the_packages_and_runs_the_worker():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    copied = {rest.split()[0] for word, rest in instructions if word == "COPY"}
    assert {"worker", "producers", "schemas", "sandbox"} <= copied
    assert any(word == "RUN" and "pip install" in rest for word, rest in instructions)
    (cmd,) = [rest for word, rest in instructions if word == "CMD"]
    assert " ".join(json.loads(cmd)) == SERVICES["worker"]["command"]
    assert any(word == "USER" for word, _ in instructions)
