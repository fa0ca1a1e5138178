"""docker-compose.yml: `docker compose config` where the client can run it, and the checks an
SRE would make by reading the file (no engine is needed for any of them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from parley_devstack.idp import rs256_key_pair

REPO = Path(__file__).resolve().parents[2]
NATS_NODES = ("nats", "nats-2", "nats-3")
SECRETS = {
    "PARLEY_MONGODB_PASSWORD": "pw0123456789",
    "PARLEY_NATS_GATEWAY_PASSWORD": "gw0123456789",
    "PARLEY_NATS_CONVERSATION_PASSWORD": "cv0123456789",
    "PARLEY_NATS_AGENT_BRIDGE_PASSWORD": "ab0123456789",
}
# Not secret, not required by compose: the gateways refuse to start without it (RS256).
PUBLIC = {"PARLEY_JWT_PUBLIC_KEY": rs256_key_pair()[1]}


def _compose(dt: ModuleType, **extra: str) -> dict[str, Any]:
    compose: dict[str, Any] = dt.load_compose({**SECRETS, **PUBLIC, **extra})
    return compose


def _parley_services(dt: ModuleType, compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if dt.compose_module(service) is not None
    }


def _docker_compose_argv() -> list[str] | None:
    """`docker compose` (the v2 plugin) or `docker-compose`, if one of them answers."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for argv in candidates:
        probe = subprocess.run(
            [*argv, "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return argv
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    argv = _docker_compose_argv()
    if argv is None:
        pytest.skip(
            "neither `docker compose` (the compose plugin) nor `docker-compose` is installed "
            "here (`docker --version` answers, `docker compose version` does not); the "
            "interpolation and structure checks below still run"
        )
    env = {**os.environ, **SECRETS, **PUBLIC}
    for profiles in ([], ["--profile", "monitoring"]):
        result = subprocess.run(
            [*argv, "-f", str(REPO / "docker-compose.yml"), *profiles, "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    # Without the secrets compose must refuse to render the file.
    bare = {k: v for k, v in os.environ.items() if k not in SECRETS}
    result = subprocess.run(
        [*argv, "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=bare,
        check=False,
    )
    assert result.returncode != 0 and "PARLEY_MONGODB_PASSWORD" in result.stderr + result.stdout


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(dt: ModuleType, missing: str) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    with pytest.raises(dt.InterpolationError, match=missing):
        dt.load_compose(env)
    with pytest.raises(dt.InterpolationError, match=missing):
        dt.load_compose({**env, missing: ""})


def test_no_secret_has_an_empty_or_default_value(dt: ModuleType) -> None:
    """Every variable that looks like a secret is required (${VAR:?...}) in the raw file."""
    raw = (REPO / "docker-compose.yml").read_text()
    secretish = re.compile(r"(SECRET|PASSWORD|TOKEN|API_KEY|PRIVATE)", re.I)
    for match in re.finditer(r"\$\{([A-Z0-9_]+)(:?[-?+])?([^}]*)\}", raw):
        name, op = match.group(1), match.group(2)
        if secretish.search(name):
            assert op == ":?", f"${{{name}}} must be required with :? (found {match.group(0)})"
    compose = _compose(dt)
    for name, service in compose["services"].items():
        for key, value in dt.compose_environment(service).items():
            if secretish.search(key) and not key.endswith("_FILE"):
                assert value and value not in ("changeme", "secret", "admin"), (name, key)


def test_compose_runs_production_mode_with_the_expected_topology(dt: ModuleType) -> None:
    compose = _compose(dt)
    services = compose["services"]
    parley = _parley_services(dt, compose)
    modules = {name: dt.compose_module(service) for name, service in parley.items()}
    assert sorted(modules.values()) == sorted(
        ["parley_conversation", "parley_agent_bridge"] + ["parley_gateway"] * 3
    )
    assert services["conversation"]["deploy"]["replicas"] == 2
    for name, service in parley.items():
        env = dt.compose_environment(service)
        assert env["PARLEY_ENVIRONMENT"] == "production", name
        assert env["NATS_URL"].split(",") == [f"nats://{h}:4222" for h in NATS_NODES], name
        assert service["stop_signal"] == "SIGTERM", name
        assert service.get("read_only") is True, name
    ids = [dt.compose_environment(parley[f"gateway-{i}"])["PARLEY_INSTANCE_ID"] for i in (1, 2, 3)]
    assert len(set(ids)) == 3
    assert "postgres" not in " ".join(services), "no PostgreSQL: there is no adapter (docs)"
    # Only nginx is published on all interfaces; monitoring binds to localhost.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert name == "nginx" or str(port).startswith("127.0.0.1:"), (name, port)


def test_every_dependency_waits_for_a_healthy_service(dt: ModuleType) -> None:
    compose = _compose(dt)
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if name in ("grafana",):
            continue
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for dependency, rule in depends.items():
            assert dependency in services, (name, dependency)
            assert rule["condition"] == "service_healthy", (name, dependency)
            assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    for name, service in _parley_services(dt, compose).items():
        test = " ".join(service["healthcheck"]["test"])
        assert "/readyz" in test, name


def test_every_drain_fits_in_the_stop_grace_period(
    dt: ModuleType, all_service_settings: dict[str, Any]
) -> None:
    """A service reading *_DRAIN_SECONDS gets the compose value (or its default) plus a
    shutdown margin within stop_grace_period, after which compose sends SIGKILL."""
    compose = _compose(dt)
    services: dict[str, str] = dt.SERVICES
    checked = 0
    for name, service in _parley_services(dt, compose).items():
        module = dt.compose_module(service)
        kind = next(k for k, package in services.items() if package == module)
        settings = all_service_settings[kind]
        env = dt.compose_environment(service)
        grace = int(str(service["stop_grace_period"]).rstrip("s"))
        for var, field in settings.env.items():
            if var.endswith("_DRAIN_SECONDS"):
                cls = next(c for c in settings.classes if c.__name__ == field.split(".")[0])
                drain = float(env.get(var, cls.model_fields[field.split(".")[1]].default))
                assert drain + 10 <= grace, (name, var, drain, grace)
                checked += 1
    assert checked >= 4, "three gateways and the conversation service drain"


def test_nginx_balances_all_gateways_and_upgrades_websockets(dt: ModuleType) -> None:
    compose = _compose(dt)
    template = (REPO / "deploy" / "nginx" / "parley.conf.template").read_text()
    gateways = sorted(
        n for n, s in compose["services"].items() if dt.compose_module(s) == "parley_gateway"
    )
    upstreams = sorted(re.findall(r"^\s*server\s+([\w-]+):(\d+)", template, re.M))
    ports = {
        dt.compose_environment(compose["services"][name])["PARLEY_GATEWAY_PORT"]
        for name in gateways
    }
    assert [host for host, _ in upstreams] == gateways
    assert {port for _, port in upstreams} == ports
    assert "proxy_set_header Upgrade $http_upgrade;" in template
    assert "proxy_set_header Connection $connection_upgrade;" in template
    read_timeouts = re.findall(r"proxy_read_timeout\s+(\d+)s;", template)
    assert max(int(t) for t in read_timeouts) >= 3600
    # ip_hash is an option, off by default.
    nginx_env = dt.compose_environment(compose["services"]["nginx"])
    assert nginx_env["PARLEY_LB_METHOD"] == "least_conn"
    assert (
        dt.compose_environment(_compose(dt, PARLEY_LB_METHOD="ip_hash")["services"]["nginx"])[
            "PARLEY_LB_METHOD"
        ]
        == "ip_hash"
    )
    # The only ${...} in the template is PARLEY_LB_METHOD (nginx's envsubst would replace any
    # other defined variable and break nginx's own $variables).
    assert set(re.findall(r"\$\{(\w+)\}", template)) == {"PARLEY_LB_METHOD"}


def _nginx_locations(template: str) -> dict[str, dict[str, list[str]]]:
    """The ``location`` blocks: their prefix (``= /x`` kept as is) → directive → arguments.

    A small reader of nginx's syntax (directives end with ``;``, blocks in ``{}``, ``#``
    comments, quoted strings), enough for this template."""
    text = re.sub(r"#[^\n]*", "", template)
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};"]+', text)
    locations: dict[str, dict[str, list[str]]] = {}
    blocks: list[tuple[list[str], dict[str, list[str]]]] = []  # (block head, directives)
    words: list[str] = []
    for tok in tokens:
        if tok == "{":
            blocks.append((words, {}))
            words = []
        elif tok == "}":
            head, directives = blocks.pop()
            if head[0] == "location":
                locations[" ".join(head[1:])] = directives
        elif tok == ";":
            if blocks:
                blocks[-1][1].setdefault(words[0], []).append(" ".join(words[1:]))
            words = []
        else:
            words.append(tok)
    return locations


def _nginx_route(locations: dict[str, dict[str, list[str]]], path: str) -> dict[str, list[str]]:
    """The location nginx picks for ``path``: an exact ``=`` match; else the longest prefix
    if it is ``^~``; else the first regex (``~``, ``~*``) that matches, in file order; else
    the longest prefix."""
    if f"= {path}" in locations:
        return locations[f"= {path}"]
    prefixes = {k.removeprefix("^~ "): k for k in locations if not k.startswith(("=", "~"))}
    longest = max((p for p in prefixes if path.startswith(p)), key=len, default=None)
    if longest is not None and prefixes[longest].startswith("^~"):
        return locations[prefixes[longest]]
    for key, directives in locations.items():
        kind, _, pattern = key.partition(" ")
        if kind in ("~", "~*") and re.search(pattern, path, re.I if kind == "~*" else 0):
            return directives
    assert longest is not None, f"no location for {path}"
    return locations[prefixes[longest]]


def test_nginx_passes_websocket_upgrades_on_every_websocket_path() -> None:
    """/ws and /socket.io/ (issue 14): the location nginx picks sends Upgrade and
    Connection: upgrade to the gateway, so Socket.IO clients can leave long-polling."""
    from parley_gateway.sio.endpoint import PATH as SIO_PATH

    template = (REPO / "deploy" / "nginx" / "parley.conf.template").read_text()
    locations = _nginx_locations(template)
    assert "/" in locations and "/ws" in locations, sorted(locations)
    for path in ("/ws", SIO_PATH, SIO_PATH + "?EIO=4&transport=websocket"):
        loc = _nginx_route(locations, path.partition("?")[0])
        headers = dict(h.split(" ", 1) for h in loc.get("proxy_set_header", []))
        assert loc["proxy_pass"] == ["http://parley_gateways"], path
        assert loc["proxy_http_version"] == ["1.1"], path
        assert headers.get("Upgrade") == "$http_upgrade", (path, headers)
        assert headers.get("Connection") == "$connection_upgrade", (path, headers)
        # Long-lived sockets and long-polls: longer than the heartbeat.
        assert int(loc["proxy_read_timeout"][0].rstrip("s")) >= 3600, path
    # The router above picks regex locations too (uploads are streamed, not buffered).
    upload = _nginx_route(locations, "/v1/conversations/c1/attachments")
    assert upload.get("proxy_request_buffering") == ["off"]
    # Socket.IO long-polling: answers are not held in nginx's buffers.
    assert _nginx_route(locations, SIO_PATH)["proxy_buffering"] == ["off"]
    # The map sends no Connection header for plain requests (upstream keep-alive).
    assert re.search(r'map \$http_upgrade \$connection_upgrade \{[^}]*""\s+"";', template)


def test_nginx_template_renders_with_envsubst() -> None:
    envsubst = shutil.which("envsubst")
    if envsubst is None:
        pytest.skip("envsubst (gettext-base) is not installed")
    template = (REPO / "deploy" / "nginx" / "parley.conf.template").read_text()
    rendered = subprocess.run(
        [envsubst, "${PARLEY_LB_METHOD}"],
        input=template,
        capture_output=True,
        text=True,
        env={"PARLEY_LB_METHOD": "least_conn"},
        timeout=10,
        check=True,
    ).stdout
    assert "least_conn;" in rendered and "$http_upgrade" in rendered


def test_bind_mounted_files_exist(dt: ModuleType) -> None:
    compose = _compose(dt)
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name


def test_agents_files_load_with_the_bridge_own_loader(
    dt: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """deploy/agents.yaml (compose) and the parley-agents ConfigMap (k8s) both parse."""
    from parley_agent_bridge.config import Settings, load_agents

    config_map = next(
        d.body for d in dt.k8s_docs() if d.kind == "ConfigMap" and d.name == "parley-agents"
    )
    k8s_file = tmp_path / "agents.yaml"
    k8s_file.write_text(config_map["data"]["agents.yaml"])
    for path in (REPO / "deploy" / "agents.yaml", k8s_file):
        monkeypatch.setenv("PARLEY_AGENT_BRIDGE_AGENTS_FILE", str(path))
        agents = load_agents(Settings())
        assert "agent-demo" in agents, path
