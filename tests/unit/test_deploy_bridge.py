"""The bridge's deployment artefacts (deploy/k8s/bridge.yaml, the `bridge` service of
docker-compose.yml) agree with `publisher.bridge`: the settings they pass load, the shared ones
match the gateway's, probes and ports line up, two replicas on Kubernetes. Schema validation and
the kustomization listing are test_deploy_manifests.py's (it reads every manifest of the base).
"""

from __future__ import annotations

from typing import Any

from publisher.bridge.config import load
from tests.unit.test_deploy_manifests import compose, compose_default, deployment_env, find

BRIDGE = "notification-bridge"
SHARED = ("CHANNEL_PREFIX", "KEY_PREFIX", "HISTORY_MAX_LEN", "RECOVERY_WINDOW")


def bridge_container() -> dict[str, Any]:
    containers = find("Deployment", BRIDGE)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def bridge_env() -> dict[str, str]:
    container = bridge_container()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container["env"]:
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            env[item["name"]] = find("Secret", ref["name"])["stringData"][ref["key"]]
        elif "value" in item:
            env[item["name"]] = item["value"]
    return env


def test_the_bridge_deployment_runs_two_bridges_with_probes_on_its_port() -> None:
    deployment = find("Deployment", BRIDGE)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = bridge_container()
    assert container["command"] == ["python", "-m", "publisher", "bridge"]
    settings = load({}, env=bridge_env())  # raises ConfigError naming the setting
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": settings.port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "BRIDGE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]


def test_the_bridge_publishes_as_the_gateway_reads() -> None:
    """Prefixes, history length and window the same as the replicas': bridged events land in
    the streams and channels the replicas read, kept as long."""
    gateway, bridge = deployment_env(), bridge_env()
    for name in SHARED:
        assert bridge.get(name) == gateway.get(name), name
    assert bridge["REDIS_URL"] == gateway["REDIS_URL"]


def test_the_bridge_service_policy_and_budget_select_its_pods() -> None:
    labels = find("Deployment", BRIDGE)["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    service = find("Service", BRIDGE)
    assert selects(service["spec"]["selector"])
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    assert selects(find("PodDisruptionBudget", BRIDGE)["spec"]["selector"]["matchLabels"])
    policy = find("NetworkPolicy", BRIDGE)
    assert selects(policy["spec"]["podSelector"]["matchLabels"])
    redis_labels = find("Deployment", "notification-redis")["spec"]["template"]["metadata"]["labels"]
    assert any(all(redis_labels.get(k) == v for k, v in peer["podSelector"]["matchLabels"].items())
               for rule in policy["spec"]["egress"] for peer in rule["to"]
               if "podSelector" in peer and "namespaceSelector" not in peer)
    # the gateway's own policy and budget do not select the bridge
    assert not selects(find("NetworkPolicy", "notification-gateway")["spec"]["podSelector"]["matchLabels"])


def test_compose_runs_a_bridge_on_the_replicas_redis() -> None:
    services = compose()["services"]
    bridge = services["bridge"]
    assert bridge["command"] == ["python", "-m", "publisher", "bridge"]
    env = {k: compose_default(v) for k, v in bridge["environment"].items()}
    settings = load({}, env=env)
    assert settings.redis_url == compose_default(services["gateway-1"]["environment"]["REDIS_URL"])
    for name in SHARED:
        assert env.get(name) == services["gateway-1"]["environment"].get(name), name
    assert f"{settings.port}/readyz" in " ".join(bridge["healthcheck"]["test"])
    assert bridge["depends_on"]["redis"]["condition"] == "service_healthy"
    assert bridge["image"] == services["gateway-1"]["image"]
