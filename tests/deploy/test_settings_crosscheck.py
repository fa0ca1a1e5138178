"""What each service reads (its pydantic-settings ``Settings``, introspected live) against
what docker compose, the k8s manifests and docs/configuration.md provide:

- every variable a service reads is in the table of docs/configuration.md, with that service
  in "Read by";
- every variable the table does not mark "default" is set by compose and by k8s for every
  service that reads it;
- compose and k8s set nothing a service does not read (a typo would otherwise be silently
  ignored: the Settings classes use extra="ignore").
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from parley_devstack.idp import rs256_key_pair
from parley_devstack.tlscerts import TestCA

REPO = Path(__file__).resolve().parents[2]
PUBLIC_KEY = rs256_key_pair()[1]
SECRETS = {
    "PARLEY_JWT_PUBLIC_KEY": PUBLIC_KEY,
    "PARLEY_MONGODB_PASSWORD": "pw0123456789",
    **{
        f"PARLEY_NATS_{r}_PASSWORD": "pw0123456789"
        for r in ("GATEWAY", "CONVERSATION", "AGENT_BRIDGE")
    },
}
# Variables of the agents file's api_key_env (read with os.environ, not Settings).
LIBRARY_READS = {"agent-bridge": set[str]()}


def _service_of_module(dt: ModuleType, module: str) -> str:
    services: dict[str, str] = dt.SERVICES
    return next(name for name, package in services.items() if package == module)


def _compose_envs(dt: ModuleType) -> list[tuple[str, str, dict[str, str]]]:
    compose = dt.load_compose(SECRETS)
    result = []
    for name, service in compose["services"].items():
        module = dt.compose_module(service)
        if module:
            result.append((name, _service_of_module(dt, module), dt.compose_environment(service)))
    return result


def _k8s_envs(dt: ModuleType) -> list[tuple[str, str, dict[str, str]]]:
    docs = dt.k8s_docs(include_examples=False)
    result = []
    for doc in docs:
        if doc.kind not in ("Deployment", "StatefulSet"):
            continue
        for container in doc.body["spec"]["template"]["spec"]["containers"]:
            module = dt.container_module(container)
            if module:
                env = dt.k8s_container_env(container, docs)
                result.append((repr(doc), _service_of_module(dt, module), env))
    return result


def test_every_service_has_settings_with_the_shared_names(
    all_service_settings: dict[str, Any],
) -> None:
    for service, settings in all_service_settings.items():
        assert settings.classes, f"no BaseSettings subclass found in {settings.package}"
        for shared in ("NATS_URL", "PARLEY_ENVIRONMENT", "PARLEY_LOG_LEVEL", "PARLEY_INSTANCE_ID"):
            assert shared in settings.env, f"{service} does not read {shared}"


def test_the_configuration_table_lists_every_variable_each_service_reads(
    dt: ModuleType, all_service_settings: dict[str, Any]
) -> None:
    rows = dt.config_doc_rows()
    problems = []
    for service, settings in all_service_settings.items():
        for name, field in sorted(settings.env.items()):
            row = rows.get(name)
            if row is None:
                problems.append(f"{name} ({service}: {field}) is missing from the table")
            elif service not in row.read_by:
                problems.append(f"{name}: 'Read by' lacks {service}")
    for name, row in rows.items():
        for service in row.read_by:
            reads = all_service_settings[service].env.keys() | LIBRARY_READS.get(service, set())
            if name not in reads:
                problems.append(f"the table says {service} reads {name}; its Settings do not")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_deployments_set_what_services_read_and_nothing_else(
    dt: ModuleType, all_service_settings: dict[str, Any], where: str
) -> None:
    rows = dt.config_doc_rows()
    envs = _compose_envs(dt) if where == "compose" else _k8s_envs(dt)
    assert {service for _, service, _ in envs} == set(dt.SERVICES), "every service is deployed"
    problems = []
    for unit, service, env in envs:
        reads = set(all_service_settings[service].env) | LIBRARY_READS.get(service, set())
        for name in sorted(set(env) - reads):
            problems.append(f"{where} {unit} sets {name}, which {service} does not read")
        for name in sorted(reads - set(env)):
            row = rows.get(name)
            cell = "" if row is None else (row.compose if where == "compose" else row.k8s)
            if not dt.is_defaulted(cell):
                problems.append(
                    f"{where} {unit} does not set {name} ({service} reads it; the table "
                    f"does not mark it 'default')"
                )
    assert not problems, "\n".join(problems)


def test_production_deployments_are_production(dt: ModuleType) -> None:
    for where, envs in (("compose", _compose_envs(dt)), ("k8s", _k8s_envs(dt))):
        for unit, _, env in envs:
            assert env.get("PARLEY_ENVIRONMENT") == "production", (where, unit)


# What the k8s Secret and the downward API give a pod (the manifests only name them).
K8S_REFERENCED = {
    "PARLEY_JWT_PUBLIC_KEY": PUBLIC_KEY,
    "MONGODB_URL": "mongodb://parley:pw@mongodb:27017/?authSource=admin",
    "PARLEY_INSTANCE_ID": "parley-gateway-5d9f7c-abcde",
}


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_settings_accept_the_deployed_environment(
    dt: ModuleType,
    all_service_settings: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    where: str,
) -> None:
    """Each service's Settings validate the values compose / k8s give it (types, ranges)
    and pass the service's production check (no development JWT secret). The CA files the
    manifests mount from Secrets are real CA certificates here, at the same names."""
    ca = TestCA(tmp_path / "ca")
    envs = _compose_envs(dt) if where == "compose" else _k8s_envs(dt)
    for unit, service, env in envs:
        for name in list(os.environ):
            if name.startswith(("PARLEY_", "NATS_", "MONGODB_")):
                monkeypatch.delenv(name)
        for name, value in env.items():
            if value.startswith("<from "):
                if name not in K8S_REFERENCED:
                    continue  # an optional secret key (e.g. the RS256 public key)
                value = K8S_REFERENCED[name]  # noqa: PLW2901
            if name in ("NATS_CA", "MONGODB_TLS_CA_FILE"):  # a path inside the pod
                local = tmp_path / value.lstrip("/")
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes((ca.directory / "ca.pem").read_bytes())
                value = str(local)  # noqa: PLW2901
            monkeypatch.setenv(name, value)
        for cls in all_service_settings[service].classes:
            settings = cls()
            assert settings.environment == "production", unit
            check = getattr(settings, "check", None)
            if callable(check):
                check()


def _size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]?B?)", text.strip().upper())
    assert match, text
    unit = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3}
    return int(match.group(1)) * unit[match.group(2)]


def test_nats_max_payload_carries_the_largest_reply(
    dt: ModuleType, all_service_settings: dict[str, Any]
) -> None:
    """History replies are cut at PARLEY_CONVERSATION_MAX_REPLY_BYTES; NATS must accept them."""
    settings = all_service_settings["conversation"]
    field = settings.env.get("PARLEY_CONVERSATION_MAX_REPLY_BYTES")
    if field is None:
        pytest.skip("the conversation service no longer reads PARLEY_CONVERSATION_MAX_REPLY_BYTES")
    cls = next(c for c in settings.classes if c.__name__ == field.split(".")[0])
    reply = int(cls.model_fields[field.split(".")[1]].default)
    config_map = next(d for d in dt.k8s_docs() if d.kind == "ConfigMap" and d.name == "nats-config")
    confs = [config_map.body["data"]["nats.conf"]]
    confs += [
        p.read_text()
        for p in sorted((REPO / "deploy" / "nats").glob("*.conf"))
        if p.name != "auth.conf"  # the users (included by the server config)
    ]
    for conf in confs:
        match = re.search(r"^\s*max_payload:\s*(\S+)", conf, re.M)
        assert match, "set max_payload explicitly"
        assert _size(match.group(1)) > reply
