"""deploy/k8s/ checked offline: every built-in resource against the Kubernetes
schemas that ship in ``kubernetes-validate`` (strict: unknown fields fail),
every custom resource against the ``openAPIV3Schema`` of its CRD vendored in
deploy/k8s/crds/ (kubernetes-validate passes custom kinds without a word), and
the manifests against the code: commands parse, variables are settings,
credentials are files, Flower holds no backend credential.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate
from kubernetes_validate.version import __version__ as KUBERNETES_VALIDATE_VERSION

from ops.cli import build_parser
from tests.unit.deploy.test_deploy import known_variables
from tests.unit.deploy.test_deploy_monitoring import JOB, metric_names, series_names
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
# The Kubernetes version the manifests are written for and validated against.
KUBERNETES_VERSION = "1.31.0"
NAMESPACE = "grants"
BACKEND_WORDS = ("XSOLLA", "PLAYFAB", "BACKPACK")


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFEST_FILES = sorted(p for p in K8S.rglob("*.yaml") if "crds" not in p.relative_to(K8S).parts)
MANIFESTS = [(path.relative_to(K8S).as_posix(), doc) for path in MANIFEST_FILES for doc in load(path)]
BASE = [doc for name, doc in MANIFESTS if not name.startswith("staging/")]
STAGING = [doc for name, doc in MANIFESTS if name.startswith("staging/")]
CRDS = {
    (crd["spec"]["group"], crd["spec"]["names"]["kind"]): crd
    for path in sorted((K8S / "crds").glob("*.yaml"))
    for crd in load(path)
}


def applied(staging: bool) -> list[dict]:
    """What the cluster holds after `kubectl apply -f deploy/k8s/` (and `staging/`):
    a staging object replaces the base one of the same kind and name."""
    if not staging:
        return BASE
    replaced = {(d["kind"], d["metadata"]["name"]) for d in STAGING}
    return [d for d in BASE if (d["kind"], d["metadata"]["name"]) not in replaced] + STAGING


VIEWS = {"production": applied(False), "staging": applied(True)}


def builtin(doc: dict) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def one(docs: list[dict], kind: str, name: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def config_maps(docs: list[dict]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}


def example_secrets() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["stringData"] for d in BASE if d["kind"] == "Secret"}


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}]


def pod_env(workload: dict, container: dict, docs: list[dict]) -> dict[str, str]:
    """The container's environment as the pod sees it (ConfigMaps resolved)."""
    maps = config_maps(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "secretRef" not in source, "secrets are files, never envFrom"
        env.update(maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]
            assert "secretKeyRef" not in ref, f"{var['name']}: secrets are files, never secretKeyRef"
            key_ref = ref["configMapKeyRef"]
            env[var["name"]] = maps[key_ref["name"]][key_ref["key"]]
    return env


def secret_files(workload: dict, container: dict) -> dict[str, tuple[str, str]]:
    """Path of every file a container sees from a Secret -> (secret, key)."""
    spec = workload["spec"]["template"]["spec"]
    files = {}
    for mount in container.get("volumeMounts", []):
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        if "secret" not in volume:
            continue
        secret = volume["secret"]["secretName"]
        items = volume["secret"].get("items") or [{"key": k, "path": k} for k in example_secrets()[secret]]
        for item in items:
            files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = (secret, item["key"])
    return files


def containers(docs: list[dict]):
    for workload in workloads(docs):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            yield workload, container


# --- schemas -------------------------------------------------------------------


def test_there_is_something_to_validate():
    kinds = {d["kind"] for _, d in MANIFESTS}
    assert {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
    } <= kinds


@pytest.mark.parametrize(
    "name,doc",
    [(n, d) for n, d in MANIFESTS if builtin(d)],
    ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}",
)
def test_builtin_resources_match_the_kubernetes_schema(name, doc):
    # Strict: a field Kubernetes does not know fails, as `kubectl apply
    # --validate=strict` would. A missing schema is a failure, not a pass.
    version = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert version == "1.31"


def test_kubernetes_validation_catches_a_typo():
    """kubernetes-validate (this version) really rejects an unknown field offline."""
    deployment = copy.deepcopy(one(BASE, "Deployment", "grants-worker"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    assert KUBERNETES_VALIDATE_VERSION


def strict_schema(schema: dict) -> dict:
    """The CRD schema with unknown fields refused where Kubernetes would prune
    them (an object with properties, no additionalProperties, not marked to
    keep unknown fields), so a misspelt field fails here too."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_validator(doc: dict) -> jsonschema.Validator:
    group, _, version = doc["apiVersion"].rpartition("/")
    crd = CRDS[(group, doc["kind"])]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = strict_schema(served["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


CUSTOM = [(n, d) for n, d in MANIFESTS if not builtin(d)]


def test_every_custom_resource_has_a_vendored_crd():
    for name, doc in CUSTOM:
        group = doc["apiVersion"].rpartition("/")[0]
        assert (group, doc["kind"]) in CRDS, f"{name}: no CRD in deploy/k8s/crds for {doc['kind']}"


@pytest.mark.parametrize(
    "name,doc", CUSTOM, ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}"
)
def test_custom_resources_match_their_crd(name, doc):
    errors = sorted(crd_validator(doc).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_crd_validation_catches_a_typo():
    scaled = copy.deepcopy(one(BASE, "ScaledObject", "grants-worker"))
    scaled["spec"]["triggers"][0]["metdata"] = scaled["spec"]["triggers"][0].pop("metadata")
    assert list(crd_validator(scaled).iter_errors(scaled))
    monitor = copy.deepcopy(one(BASE, "ServiceMonitor", "grants-worker"))
    monitor["spec"]["endpoints"][0]["interval"] = "every 15 seconds"
    assert list(crd_validator(monitor).iter_errors(monitor))


def test_vendored_crds_say_where_they_came_from():
    readme = (K8S / "crds" / "README.md").read_text()
    for path in (K8S / "crds").glob("*.yaml"):
        assert path.name in readme
    assert "kedacore/keda" in readme and "prometheus-operator/prometheus-operator" in readme


def test_everything_is_in_the_namespace():
    for name, doc in MANIFESTS:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
            assert doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        else:
            assert doc["metadata"]["namespace"] == NAMESPACE, name


# --- the manifests against the code ----------------------------------------------


def test_every_command_is_one_the_code_accepts():
    import worker

    parser = build_parser()
    seen = set()
    for workload, container in containers(VIEWS["staging"]):
        argv = container["command"] + container.get("args", [])
        if argv[0] == "celery":
            assert argv[:3] == ["celery", "-A", "worker"], argv
            assert argv[3] in {"worker", "flower"}, argv
            seen.add(argv[3])
        else:
            assert argv[0] == "grants", argv
            args = parser.parse_args(argv[1:])
            seen.add(args.command)
    assert seen == {"worker", "flower", "sandbox"}
    assert worker.app.main == "grants"
    import flower  # noqa: F401  (installed with the package)


def test_worker_runs_the_readme_command():
    worker = one(BASE, "Deployment", "grants-worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert shlex.join(container["command"]) == "celery -A worker worker --loglevel INFO"


def test_every_grants_variable_is_a_setting():
    used = set()
    for docs in VIEWS.values():
        for workload, container in containers(docs):
            used |= {k for k in pod_env(workload, container, docs) if k.startswith("GRANTS_")}
    for data in list(config_maps(BASE).values()) + list(config_maps(STAGING).values()):
        used |= set(data)
    assert used and used <= known_variables(), used - known_variables()


def test_credentials_are_files_from_secret_volumes():
    """Every *_FILE variable names a file a Secret volume provides, with a key
    the Secret has; every secret a pod mounts is one it reads."""
    secrets = example_secrets()
    for docs in VIEWS.values():
        for workload, container in containers(docs):
            env = pod_env(workload, container, docs)
            files = secret_files(workload, container)
            read = set()
            for key, value in env.items():
                if key.endswith("_FILE"):
                    assert value in files, f"{workload['metadata']['name']}: {key}={value} is not mounted"
                    read.add(files[value])
            # Flower reads its --conf file; nothing else is read without a variable.
            read |= {files[arg.split("=", 1)[1]] for arg in container["command"] if arg.startswith("--conf=")}
            assert read == set(files.values()), f"{workload['metadata']['name']} mounts unread secrets"
            for secret, key in read:
                assert key in secrets[secret], (secret, key)


def test_no_secret_value_in_an_env_value_or_config_map():
    values = {v.strip() for data in example_secrets().values() for v in data.values()}
    for docs in VIEWS.values():
        for workload, container in containers(docs):
            for key, value in pod_env(workload, container, docs).items():
                assert value not in values, key
                assert not any(v in value for v in values), key
            for var in container.get("env", []):
                assert "secretKeyRef" not in var.get("valueFrom", {}), var["name"]
    plain = {"GRANTS_XSOLLA_API_KEY", "GRANTS_PLAYFAB_SECRET_KEY", "GRANTS_BACKPACK_TOKEN", "GRANTS_REDIS_PASSWORD"}
    for data in list(config_maps(BASE).values()) + list(config_maps(STAGING).values()):
        assert not plain & set(data)
        for value in data.values():
            assert urlsplit(value).password is None if "://" in value else True


def test_flower_has_no_backend_credential():
    flower = one(BASE, "Deployment", "grants-flower")
    spec = flower["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = pod_env(flower, container, BASE)
    assert not [k for k in env if any(word in k for word in BACKEND_WORDS)]
    assert {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v} == {"grants-redis", "grants-flower"}
    assert "grants-backends" not in {s for s, _ in secret_files(flower, container).values()}
    assert one(BASE, "Service", "grants-flower")["spec"]["type"] == "ClusterIP"


def test_flower_is_behind_basic_auth_from_its_conf_file():
    flower = one(BASE, "Deployment", "grants-flower")
    (container,) = flower["spec"]["template"]["spec"]["containers"]
    (conf,) = [a.split("=", 1)[1] for a in container["command"] if a.startswith("--conf=")]
    assert secret_files(flower, container)[conf] == ("grants-flower", "flowerconfig.py")
    namespace: dict = {}
    exec(compile(example_secrets()["grants-flower"]["flowerconfig.py"], "flowerconfig.py", "exec"), namespace)
    assert namespace["basic_auth"] and all(":" in entry for entry in namespace["basic_auth"])
    # Probes use the one page Flower serves without authentication.
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthcheck"


def test_worker_probes_and_metrics_port():
    worker = one(BASE, "Deployment", "grants-worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    env = pod_env(worker, container, BASE)
    (port,) = [p for p in container["ports"] if p["name"] == "metrics"]
    assert str(port["containerPort"]) == env["GRANTS_METRICS_PORT"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == env["GRANTS_METRICS_PORT"]


def test_grace_period_outlasts_a_drain():
    """The worker drains in < 15 s (tests/test_recovery.py); the worst case is
    one backend call at its full timeout budget plus the 2 s drain."""
    grace = one(BASE, "Deployment", "grants-worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > 15
    assert grace > Settings().http_call_budget_s + 2


def test_every_container_has_requests_and_limits_and_runs_restricted():
    for workload, container in containers(VIEWS["staging"]):
        name = workload["metadata"]["name"]
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert {"cpu", "memory"} <= set(resources["limits"]), name
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert context["readOnlyRootFilesystem"] is True, name


def test_pods_run_as_the_image_user():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for workload, _ in containers(VIEWS["staging"]):
        uid = workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
        assert f"--uid {uid} " in dockerfile, workload["metadata"]["name"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_pdb_and_service_monitor_select_the_workers():
    worker = one(BASE, "Deployment", "grants-worker")
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    service = one(BASE, "Service", "grants-worker")
    assert selects(service["spec"]["selector"], pod_labels)
    assert service["spec"]["publishNotReadyAddresses"] is True
    pdb = one(BASE, "PodDisruptionBudget", "grants-worker")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    monitor = one(BASE, "ServiceMonitor", "grants-worker")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    # The Operator names the job after the Service: the rules and dashboard expect it.
    assert "jobLabel" not in monitor["spec"] and service["metadata"]["name"] == JOB


def test_keda_scales_the_worker_on_backlog_and_stream_length():
    scaled = one(BASE, "ScaledObject", "grants-worker")
    target = scaled["spec"]["scaleTargetRef"]
    worker = one(BASE, "Deployment", "grants-worker")
    assert (target["kind"], target["name"]) == ("Deployment", worker["metadata"]["name"])
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    assert scaled["spec"]["minReplicaCount"] >= 2
    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    assert set(triggers) == {"prometheus", "redis-streams"}

    query = triggers["prometheus"]["metadata"]["query"]
    assert metric_names(query) == {"grants_backlog"} <= series_names()
    assert query.startswith("sum(") and "without (instance, pod)" in query
    assert triggers["prometheus"]["metricType"] == "AverageValue"  # per worker
    float(triggers["prometheus"]["metadata"]["threshold"])

    streams = triggers["redis-streams"]
    redis_env = config_maps(BASE)["grants-redis"]
    assert streams["metadata"]["stream"] == f"{redis_env['GRANTS_KEY_PREFIX']}:commands"
    assert int(streams["metadata"]["streamLength"]) > 0
    assert "consumerGroup" not in streams["metadata"]  # XLEN, see keda.yaml
    url = urlsplit(redis_env["GRANTS_REDIS_URL"])
    assert streams["metadata"]["address"] == f"{url.hostname}:{url.port}"
    assert streams["metadata"]["databaseIndex"] == url.path.lstrip("/")
    auth = one(BASE, "TriggerAuthentication", streams["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "password" and ref["key"] in example_secrets()[ref["name"]]


def test_redis_is_the_external_service_the_url_names():
    redis = one(BASE, "Service", "redis")
    assert redis["spec"]["type"] == "ExternalName"
    host = urlsplit(config_maps(BASE)["grants-redis"]["GRANTS_REDIS_URL"]).hostname
    assert host == f"redis.{NAMESPACE}.svc.cluster.local"
    readme = (K8S / "README.md").read_text()
    for needed in (
        "noeviction",
        "AOF",
        "replica",
        "GRANTS_REDIS_MIN_REPLICAS",
        "GRANTS_REDIS_SENTINELS",
        "GRANTS_REDIS_SENTINEL_MASTER",
    ):
        assert needed in readme, needed


def test_staging_points_the_workers_at_the_sandbox_and_changes_nothing_else():
    base = config_maps(BASE)["grants-worker"]
    staging = config_maps(STAGING)["grants-worker"]
    assert set(staging) == set(base)
    changed = {k for k in base if base[k] != staging[k]}
    assert changed == {"GRANTS_XSOLLA_BASE_URL", "GRANTS_PLAYFAB_BASE_URL", "GRANTS_BACKPACK_BASE_URL"}
    sandbox = one(STAGING, "Service", "grants-sandbox")
    (port,) = sandbox["spec"]["ports"]
    for key in changed:
        url = urlsplit(staging[key])
        assert url.hostname == f"grants-sandbox.{NAMESPACE}.svc.cluster.local" and url.port == port["port"]
    deployment = one(STAGING, "Deployment", "grants-sandbox")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["command"][1:])
    assert args.port == port["port"] and args.host == "0.0.0.0"
    assert args.db.startswith("/data/")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/data" in mounts
