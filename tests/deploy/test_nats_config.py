"""NATS in compose and k8s (issues 18 and 19): one config text (parley_devstack.natsconf)
checked in as deploy/nats/*.conf and in the k8s ConfigMap, the generated authorization
block, each service with its own NATS user from a secret, every node listed, health checks
that mean quorum. Offline: the files are parsed, nothing is deployed."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

from parley_contract import nats_auth
from parley_devstack import natsconf
from parley_devstack.natscluster import NatsCluster

REPO = Path(__file__).resolve().parents[2]
SECRETS = {
    "PARLEY_JWT_SECRET": "x" * 48,
    "PARLEY_MONGODB_PASSWORD": "pw0123456789",
    **{natsconf.password_env(r): f"pw-{r}" for r in nats_auth.ROLES},
}
ROLE_OF = {"parley_gateway": "gateway", "parley_conversation": "conversation"}
ROLE_OF["parley_agent_bridge"] = "agent-bridge"
STALE = "stale: run `uv run --frozen python -m parley_devstack.natsconf`"


def _k8s_nats_config(dt: ModuleType) -> dict[str, str]:
    docs = dt.k8s_docs()
    config_map = next(d.body for d in docs if d.kind == "ConfigMap" and d.name == "nats-config")
    data: dict[str, str] = config_map["data"]
    return data


def _masked(text: str) -> str:
    """The config with what may differ between deployments masked: addresses and paths."""
    text = re.sub(r"nats-route://\S+", "nats-route://ROUTE", text)
    text = re.sub(
        r"^(host|port|http_port|pid_file|  store_dir|  host|  port): .*$",
        r"\1: X",
        text,
        flags=re.M,
    )
    return text


def test_checked_in_configs_are_the_generated_text(dt: ModuleType) -> None:
    assert (REPO / "deploy/nats/cluster.conf").read_text() == natsconf.cluster_conf(
        natsconf.COMPOSE
    ), STALE
    assert (REPO / "deploy/nats/auth.conf").read_text() == natsconf.auth_conf(), STALE
    k8s = _k8s_nats_config(dt)
    assert k8s["nats.conf"] == natsconf.cluster_conf(natsconf.K8S), STALE
    assert k8s["auth.conf"] == natsconf.auth_conf(), STALE


def test_compose_k8s_and_the_fault_suite_run_one_config_text(
    dt: ModuleType, tmp_path: Path
) -> None:
    compose = (REPO / "deploy/nats/cluster.conf").read_text()
    k8s = _k8s_nats_config(dt)["nats.conf"]
    local = NatsCluster(tmp_path)  # not started: the text each local node is given
    texts = [compose, k8s, *(local.config(n) for n in local.nodes)]
    assert len({_masked(t) for t in texts}) == 1
    for text in texts:
        assert len(natsconf.conf_routes(text)) == 3
        assert "include ./auth.conf" in text
        assert "$NATS_SERVER_NAME" in text


def test_the_authorization_block_is_the_contracts_roles_with_secret_passwords() -> None:
    auth = natsconf.auth_conf()
    for role in nats_auth.ROLES:
        assert f'"user": "{role}"' in auth
        assert f'"password": ${natsconf.password_env(role)},' in auth  # from the environment
        for subject in nats_auth.permissions(role)["publish"]:
            assert f'"{subject}"' in auth
    assert "admin" not in auth  # tools' user: local clusters only
    assert not re.search(r'"password": "', auth), "no literal password in a checked-in file"


def test_compose_gives_each_service_its_own_nats_user_and_every_node(dt: ModuleType) -> None:
    compose = dt.load_compose(SECRETS)
    services = compose["services"]
    nodes = ["nats", "nats-2", "nats-3"]
    for name in nodes:
        node = services[name]
        assert node.get("profiles") is None, f"{name}: part of every compose run"
        assert node["command"] == ["-c", "/etc/nats/cluster.conf"]
        env = dt.compose_environment(node)
        for role in nats_auth.ROLES:
            assert env[natsconf.password_env(role)] == f"pw-{role}", (name, role)
        probe = " ".join(node["healthcheck"]["test"])
        assert probe.endswith("/healthz"), f"{name}: quorum health is plain /healthz: {probe}"
    parley = {n: s for n, s in services.items() if dt.compose_module(s) is not None}
    assert len(parley) == 5
    for name, service in parley.items():
        env = dt.compose_environment(service)
        own = ROLE_OF[dt.compose_module(service)]
        assert env["NATS_USER"] == own, name
        assert env["NATS_PASSWORD"] == f"pw-{own}", name
        assert env["NATS_URL"].split(",") == [f"nats://{n}:4222" for n in nodes], name
        depends = service["depends_on"]
        for node in nodes:
            assert depends[node]["condition"] == "service_healthy", (name, node)
    assert not _probes_without_quorum(REPO / "docker-compose.yml")


def _probes_without_quorum(path: Path) -> list[str]:
    """Lines (not comments) using ?js-enabled-only=true (200 on a lone node, no quorum)."""
    lines = path.read_text().splitlines()
    return [line for line in lines if "js-enabled-only" in line.split("#", 1)[0]]


def _env_item(container: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in container.get("env") or [] if item["name"] == name)


def test_k8s_gives_each_service_its_own_nats_user_from_a_secret(dt: ModuleType) -> None:
    docs = dt.k8s_docs()
    nats = next(d.body for d in docs if d.kind == "StatefulSet" and d.name == "nats")
    (container,) = nats["spec"]["template"]["spec"]["containers"]
    for role in nats_auth.ROLES:
        ref = _env_item(container, natsconf.password_env(role))["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "parley-nats", "key": natsconf.password_env(role)}
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "livenessProbe"):
        # Alive without quorum: a node waiting for its peers is not restarted for it.
        assert container[probe]["httpGet"]["path"] == "/healthz?js-server-only=true"
    examples = [d for d in docs if d.kind == "Secret" and d.name == "parley-nats"]
    assert examples and set(examples[0].body["stringData"]) == {
        natsconf.password_env(r) for r in nats_auth.ROLES
    }
    deployments = [d.body for d in docs if d.kind == "Deployment"]
    assert len(deployments) == 3
    for body in deployments:
        (svc,) = body["spec"]["template"]["spec"]["containers"]
        own = ROLE_OF[dt.container_module(svc)]
        env = dt.k8s_container_env(svc, docs)
        assert env["NATS_USER"] == own
        ref = _env_item(svc, "NATS_PASSWORD")["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "parley-nats", "key": natsconf.password_env(own)}
    for path in (REPO / "k8s").glob("*.yaml"):
        assert not _probes_without_quorum(path), path
