"""What an operator applies: each overlay, rendered by `kubectl kustomize`, autoscales its worker
pools, protects its stateful pieces from voluntary disruption, probes and sizes every container,
meets the restricted Pod Security Standard, gives no pod an API token, and keeps PostgreSQL outside
the cluster with its connection in a Secret. The objects these checks are about also pass the
Kubernetes API schemas of two versions (tests/e2e/test_envoy_k8s.py validates everything else)."""

from __future__ import annotations

import base64
import copy
import functools
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lomas_common.queue import QueueSettings, WorkloadClass

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ["overlays/dev", "overlays/prod"]
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
WORKER_POOLS = {"lomas-worker-light": "light", "lomas-worker-heavy": "heavy"}
# The volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}

Doc = dict[str, Any]


@functools.cache
def render(kustomization: str) -> tuple[Doc, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is needed to render k8s/: run scripts/setup-k8s-tools.sh")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    return {**of_kind(docs, "Deployment"), **of_kind(docs, "StatefulSet")}


def containers(workload: Doc) -> list[Doc]:
    pod = workload["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def env_of(container: Doc, docs: tuple[Doc, ...]) -> dict[str, str]:
    """A container's plain environment, with the ConfigMaps it imports resolved."""
    config_maps = of_kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def selects(selector: Doc, workload: Doc) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def restricted_violations(workload: Doc) -> list[str]:
    """What the restricted Pod Security Standard (and this project's rules on top of it: a read-only
    root filesystem, no API token) refuses in a workload's pod template."""
    pod = workload["spec"]["template"]["spec"]
    pod_security = pod.get("securityContext", {})
    found = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(flag)
    if pod.get("automountServiceAccountToken") is not False:
        found.append("a service-account token is mounted")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    if pod_security.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        found.append("no seccomp profile for the pod")
    for container in containers(workload):
        name = container["name"]
        security = container.get("securityContext", {})
        if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
            found.append(f"{name}: may run as root")
        if security.get("runAsUser", pod_security.get("runAsUser")) in (0, None):
            found.append(f"{name}: runs as user 0 or the image's")
        if security.get("privileged"):
            found.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: privilege escalation allowed")
        if security.get("capabilities", {}).get("drop") != ["ALL"]:
            found.append(f"{name}: capabilities not all dropped")
        if set(security.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added")
        if security.get("readOnlyRootFilesystem") is not True:
            found.append(f"{name}: writable root filesystem")
        if any("hostPort" in port for port in container.get("ports", [])):
            found.append(f"{name}: host port")
    return found


def sizing_violations(workload: Doc) -> list[str]:
    """Containers without CPU and memory requests and limits, or asking for more than their limit."""
    found = []
    for container in containers(workload):
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(bound, {}))
            if missing:
                found.append(f"{container['name']}: no {bound} for {sorted(missing)}")
        if not found:
            for resource in ("cpu", "memory"):
                request = quantity(resources["requests"][resource])
                if request > quantity(resources["limits"][resource]):
                    found.append(f"{container['name']}: {resource} request above its limit")
    return found


def quantity(text: str | int) -> float:
    """A Kubernetes quantity (the suffixes these manifests use) as a number."""
    value = str(text)
    for suffix, factor in (("m", 1e-3), ("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_objects_checked_here_pass_two_kubernetes_versions(overlay: str) -> None:
    docs = render(overlay)
    checked = [
        d
        for d in docs
        if d["kind"]
        in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceAccount", "Namespace")
        or d["metadata"]["name"] in WORKER_POOLS
    ]
    assert {d["kind"] for d in checked} == {
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Namespace",
        "Deployment",
    }
    for version in KUBERNETES_VERSIONS:
        for doc in checked:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(
                    f"{overlay} {doc['kind']}/{doc['metadata']['name']} ({version}): {error}"
                )


def test_the_schemas_refuse_a_malformed_autoscaler() -> None:
    hpa = copy.deepcopy(
        of_kind(render("overlays/prod"), "HorizontalPodAutoscaler")["lomas-worker-light"]
    )
    hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = "70%"
    for version in KUBERNETES_VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(hpa, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_worker_pool_has_an_autoscaler_on_cpu(overlay: str) -> None:
    docs = render(overlay)
    autoscalers = of_kind(docs, "HorizontalPodAutoscaler")
    deployments = of_kind(docs, "Deployment")
    targets = {hpa["spec"]["scaleTargetRef"]["name"] for hpa in autoscalers.values()}
    assert targets == set(WORKER_POOLS)
    for hpa in autoscalers.values():
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["apiVersion"]) == ("Deployment", "apps/v1")
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        (cpu,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
        assert cpu["resource"]["name"] == "cpu"
        assert 0 < cpu["resource"]["target"]["averageUtilization"] <= 100
        # The autoscaler owns the replica count; a pool set to 0 (dev's heavy one) stays off.
        assert deployments[target["name"]]["spec"].get("replicas", 1) in (0, 1)
        # Utilization is measured against requests, so the worker must declare one.
        (worker,) = deployments[target["name"]]["spec"]["template"]["spec"]["containers"]
        assert quantity(worker["resources"]["requests"]["cpu"]) > 0


def test_prod_also_scales_each_pool_on_the_length_of_its_own_queue() -> None:
    docs = render("overlays/prod")
    autoscalers = of_kind(docs, "HorizontalPodAutoscaler")
    deployments = of_kind(docs, "Deployment")
    for pool, workload in WORKER_POOLS.items():
        (hpa,) = [h for h in autoscalers.values() if h["spec"]["scaleTargetRef"]["name"] == pool]
        assert "replicas" not in deployments[pool]["spec"]
        (external,) = [m["external"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
        assert external["metric"]["name"] == "lomas_queue_depth"
        (worker,) = deployments[pool]["spec"]["template"]["spec"]["containers"]
        env = env_of(worker, docs)
        assert env["LOMAS_WORKER_QUEUES"] == workload
        queue = QueueSettings(env["LOMAS_REDIS_URL"], prefix=env["LOMAS_QUEUE_PREFIX"]).queue(
            WorkloadClass(workload)
        )
        assert external["metric"]["selector"] == {"matchLabels": {"queue": queue}}
        assert external["target"]["type"] == "AverageValue"
        assert quantity(external["target"]["averageValue"]) > 0
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
        # The pods whose /metrics report the queue are scraped.
        annotations = deployments[pool]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert env["LOMAS_METRICS_LISTEN"].endswith(":" + annotations["prometheus.io/port"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_stateful_pieces_have_disruption_budgets(overlay: str) -> None:
    docs = render(overlay)
    budgets = of_kind(docs, "PodDisruptionBudget")
    every = workloads(docs)
    covered: dict[str, Doc] = {}
    for budget in budgets.values():
        (workload,) = [w for w in every.values() if selects(budget["spec"]["selector"], w)]
        covered[workload["metadata"]["name"]] = budget
    for name, workload in every.items():
        pod = workload["spec"]["template"]["spec"]
        pod_volumes = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        # A volume of the pod's own, mounted anywhere but /tmp, holds data (dev's SQLite files).
        keeps_data_on_the_pod = any(
            m["name"] in pod_volumes and m["mountPath"] != "/tmp"
            for c in pod["containers"]
            for m in c.get("volumeMounts", [])
        )
        if workload["kind"] == "StatefulSet" or keeps_data_on_the_pod:
            # Evicting it loses data or its queue: a drain waits for the operator.
            assert covered[name]["spec"] == {
                "maxUnavailable": 0,
                "selector": covered[name]["spec"]["selector"],
            }, name
    if overlay == "overlays/prod":
        assert set(covered) == set(every)
        for name, budget in covered.items():
            replicas = every[name]["spec"].get("replicas")
            if "minAvailable" in budget["spec"] and replicas is not None:
                assert budget["spec"]["minAvailable"] < replicas, name  # a drain can proceed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_probed(overlay: str) -> None:
    docs = render(overlay)
    for name, workload in workloads(docs).items():
        for container in containers(workload):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, (name, container["name"], probe)
    for pool in WORKER_POOLS:
        (worker,) = of_kind(docs, "Deployment")[pool]["spec"]["template"]["spec"]["containers"]
        health_file = env_of(worker, docs)["LOMAS_WORKER_HEALTH_FILE"]
        assert health_file.startswith("/tmp/")  # the pod's writable emptyDir
        assert any(m["mountPath"] == "/tmp" for m in worker["volumeMounts"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = worker[probe]["exec"]["command"]
            assert health_file in command[-1], probe
        assert worker["livenessProbe"]["exec"] != worker["readinessProbe"]["exec"]


def run_probe(command: list[str], health_file: str, stand_in: Path) -> int:
    """The exit code of a worker probe's command, pointed at `stand_in` instead of the pod's file."""
    argv = [*command[:-1], command[-1].replace(health_file, str(stand_in))]
    return subprocess.run(argv, capture_output=True, timeout=10).returncode


def test_the_worker_probes_pass_on_a_fresh_health_file_only(tmp_path: Path) -> None:
    docs = render("overlays/prod")
    (worker,) = of_kind(docs, "Deployment")["lomas-worker-light"]["spec"]["template"]["spec"][
        "containers"
    ]
    health_file = env_of(worker, docs)["LOMAS_WORKER_HEALTH_FILE"]
    stand_in = tmp_path / "worker-alive"
    readiness = worker["readinessProbe"]["exec"]["command"]
    liveness = worker["livenessProbe"]["exec"]["command"]
    assert run_probe(readiness, health_file, stand_in) != 0  # no file yet
    assert run_probe(liveness, health_file, stand_in) != 0
    stand_in.touch()
    assert run_probe(readiness, health_file, stand_in) == 0
    assert run_probe(liveness, health_file, stand_in) == 0
    # The loop stopped touching it 45 s ago: not ready, not yet restarted.
    os.utime(stand_in, (time.time() - 45, time.time() - 45))
    assert run_probe(readiness, health_file, stand_in) != 0
    assert run_probe(liveness, health_file, stand_in) == 0
    os.utime(stand_in, (time.time() - 300, time.time() - 300))
    assert run_probe(liveness, health_file, stand_in) != 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_restricted_sized_and_has_its_own_tokenless_account(overlay: str) -> None:
    docs = render(overlay)
    accounts = of_kind(docs, "ServiceAccount")
    assert accounts and all(a["automountServiceAccountToken"] is False for a in accounts.values())
    (namespace,) = of_kind(docs, "Namespace").values()
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    for name, workload in workloads(docs).items():
        assert workload["spec"]["template"]["spec"]["serviceAccountName"] in accounts, name
        assert restricted_violations(workload) == [], name
        assert sizing_violations(workload) == [], name


def test_the_pod_checks_catch_what_they_look_for() -> None:
    (gateway,) = [w for n, w in workloads(render("overlays/prod")).items() if n == "lomas-gateway"]
    broken = copy.deepcopy(gateway)
    pod = broken["spec"]["template"]["spec"]
    pod["automountServiceAccountToken"] = True
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    envoy, container = pod["initContainers"][0], pod["containers"][0]
    envoy["securityContext"]["capabilities"] = {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    container["securityContext"]["readOnlyRootFilesystem"] = False
    del container["securityContext"]["allowPrivilegeEscalation"]
    del container["resources"]["limits"]["memory"]
    assert restricted_violations(broken) == [
        "a service-account token is mounted",
        "volume host: ['hostPath']",
        "envoy: capabilities added",
        "gateway: privilege escalation allowed",
        "gateway: writable root filesystem",
    ]
    assert sizing_violations(broken) == ["gateway: no limits for ['memory']"]
    container["resources"] = {
        "requests": {"cpu": "2", "memory": "1Gi"},
        "limits": {"cpu": "500m", "memory": "1Gi"},
    }
    assert sizing_violations(broken) == ["gateway: cpu request above its limit"]


def test_prod_keeps_postgresql_outside_with_its_connection_in_a_secret() -> None:
    docs = render("overlays/prod")
    images = [c["image"] for w in workloads(docs).values() for c in containers(w)]
    assert not [image for image in images if "postgres" in image]
    assert "lomas-database" not in of_kind(docs, "Secret")  # the operator creates it
    deployments = of_kind(docs, "Deployment")
    for name, key in (("lomas-admin", "admin-url"), ("lomas-budget", "budget-url")):
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["LOMAS_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "lomas-database",
            "key": key,
        }
        # libpq finds the server's CA certificate in a read-only mount of its own Secret.
        ca = Path(env["PGSSLROOTCERT"]["value"])
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(ca.parent)]
        assert mount["readOnly"] is True
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "lomas-database-ca"
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": ca.name}]


def test_dev_keeps_sqlite_files_on_the_pod_volume_its_url_names() -> None:
    docs = render("overlays/dev")
    (secret,) = [s for n, s in of_kind(docs, "Secret").items() if n.startswith("lomas-database")]
    deployments = of_kind(docs, "Deployment")
    for name, key in (("lomas-admin", "admin-url"), ("lomas-budget", "budget-url")):
        url = secret_value(secret, key)
        assert url.startswith("sqlite:////")
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert str(Path(url.removeprefix("sqlite:///")).parent) in mounts


def secret_value(secret: Doc, key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def test_prod_pads_data_dependent_responses_and_dev_does_not() -> None:
    for overlay, expected in (("overlays/prod", ("0.5", "0.25")), ("overlays/dev", None)):
        docs = render(overlay)
        (gateway,) = [
            c for c in containers(workloads(docs)["lomas-gateway"]) if c["name"] == "gateway"
        ]
        env = env_of(gateway, docs)
        padding = (env.get("LOMAS_RESPONSE_MIN_SECONDS"), env.get("LOMAS_RESPONSE_QUANTUM_SECONDS"))
        assert padding == (expected or (None, None)), overlay
