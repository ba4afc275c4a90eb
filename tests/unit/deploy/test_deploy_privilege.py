"""Least privilege, checked from the settings outward: a backend credential is
any setting the worker keeps as a secret (a ``SecretStr`` field, its
``*_FILE`` variant, or GRANTS_PROJECTS, whose per-project backends name
their keys). Flower, in docker-compose, in Kubernetes and on the local stack
the demo starts, gets none of them, and is reachable only privately and
behind its basic auth; no service gets a secret it does not read.
"""

from __future__ import annotations

import typing

from pydantic import SecretStr

from devstack.localstack import Stack
from tests.unit.deploy.test_deploy import COMPOSE, SERVICES, secrets_read_by
from tests.unit.deploy.test_deploy_k8s import BASE, VIEWS, example_secrets, one, pod_env, secret_files
from worker.settings import Settings

# Services that never call a backend.
NOT_BACKEND_CALLERS = {"flower", "redis", "prometheus", "grafana"}


def backend_credential_variables() -> set[str]:
    names = {"GRANTS_PROJECTS"}
    for name, field in Settings.model_fields.items():
        if field.annotation is SecretStr or SecretStr in typing.get_args(field.annotation):
            if name.startswith("redis"):  # the broker's: Flower needs it
                continue
            names |= {f"GRANTS_{name.upper()}", f"GRANTS_{name.upper()}_FILE"}
    return names


def test_the_backend_credentials_are_found_from_the_settings():
    creds = backend_credential_variables()
    assert {"GRANTS_XSOLLA_API_KEY_FILE", "GRANTS_PLAYFAB_SECRET_KEY", "GRANTS_BACKPACK_TOKEN_FILE"} <= creds
    assert not any("REDIS" in c for c in creds)


def test_compose_gives_no_backend_credential_to_flower_or_the_tools():
    creds = backend_credential_variables()
    for name in NOT_BACKEND_CALLERS:
        service = SERVICES[name]
        env = service.get("environment") or {}
        if isinstance(env, list):  # KEY=value form
            env = dict(item.split("=", 1) for item in env)
        assert not creds & set(env), (name, creds & set(env))
        # The backend key file is a secret only the backend callers receive.
        assert "xsolla_api_key" not in service.get("secrets", []), name
    assert not SERVICES["flower"].get("secrets")
    for name, service in SERVICES.items():  # and nobody gets a secret it does not read
        env = service.get("environment") or {}
        assert set(service.get("secrets", [])) == secrets_read_by(env, "/run/secrets"), name
    assert set(COMPOSE["secrets"]) == {s for svc in SERVICES.values() for s in svc.get("secrets", [])}


def test_compose_flower_binds_to_loopback_behind_basic_auth():
    flower = SERVICES["flower"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert "network_mode" not in flower  # host networking would bypass the loopback binding
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def test_k8s_flower_has_no_backend_credential_and_is_cluster_internal():
    creds = backend_credential_variables()
    backend_keys = set(example_secrets()["grants-backends"])
    for docs in VIEWS.values():
        flower = one(docs, "Deployment", "grants-flower")
        (container,) = flower["spec"]["template"]["spec"]["containers"]
        env = pod_env(flower, container, docs)
        assert not creds & set(env), creds & set(env)
        mounted = set(secret_files(flower, container).values())
        assert not {(s, k) for s, k in mounted if s == "grants-backends" or k in backend_keys}, mounted
        service = one(docs, "Service", "grants-flower")
        assert service["spec"]["type"] == "ClusterIP"
        assert not any("nodePort" in p for p in service["spec"]["ports"])
        # Nothing exposes it outside the cluster.
        assert not [d for d in docs if d["kind"] in ("Ingress", "Gateway", "HTTPRoute")]
    # The backend keys are mounted only where a *_FILE variable reads them.
    for doc in BASE:
        if doc["kind"] != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            paths = {path for path, (s, _) in secret_files(doc, container).items() if s == "grants-backends"}
            read = {v for k, v in pod_env(doc, container, BASE).items() if k.endswith("_FILE")}
            assert paths <= read, (doc["metadata"]["name"], paths - read)


def test_the_local_stack_gives_flower_no_backend_credential(tmp_path):
    stack = Stack(tmp_path, settings_env={"GRANTS_PROJECTS": '{"9001": {"backend": "playfab"}}'})
    env = stack.flower_env()
    assert not backend_credential_variables() & set(env)
    assert not {stack.api_key, stack.playfab_key, stack.backpack_token} & set(env.values())
    assert env["FLOWER_BASIC_AUTH"] == ":".join(stack.flower_auth)
    assert "GRANTS_REDIS_URL" in env
    # The workers still get them.
    assert stack.env()["GRANTS_XSOLLA_API_KEY"] == stack.api_key
