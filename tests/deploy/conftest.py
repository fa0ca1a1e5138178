"""Helpers for the deployment tests: read docker-compose.yml, the k8s manifests, the
Dockerfiles and each service's pydantic-settings ``Settings`` (what env vars it reads).

The test modules reach these helpers through the ``dt`` fixture (this module itself): with
--import-mode=importlib a test file cannot import a sibling module or conftest by name.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices, AliasPath
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S_DIR = REPO / "k8s"
DOCKER_DIR = REPO / "deploy" / "docker"
CONFIG_DOC = REPO / "docs" / "configuration.md"

# The Python package of each Parley service, by its short name.
SERVICES: dict[str, str] = {
    "gateway": "parley_gateway",
    "conversation": "parley_conversation",
    "agent-bridge": "parley_agent_bridge",
}
K8S_VERSION = "1.31.0"


# --- compose interpolation --------------------------------------------------------------


class InterpolationError(ValueError):
    pass


# The compose-spec forms: $$, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}, ${VAR:+a},
# ${VAR+a}, $VAR. Written here (30 lines) because the one Python implementation,
# docker-compose 1.x's, pins PyYAML < 6 and cannot be installed beside our lock.
_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<invalid>))"
)


def interpolate_str(value: str, env: Mapping[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if (
            match.group("invalid") is not None
            and not match.group("named")
            and not match.group("braced")
        ):
            raise InterpolationError(f"invalid interpolation in {value!r}")
        name = match.group("braced") or match.group("named")
        op = match.group("op")
        arg = match.group("arg") or ""
        current = env.get(name)
        if op is None:
            return current or ""
        unset_or_empty = current is None or (op.startswith(":") and current == "")
        if op.endswith("-"):
            return arg if unset_or_empty else str(current)
        if op.endswith("?"):
            if unset_or_empty:
                raise InterpolationError(f"required variable {name} is missing: {arg}")
            return str(current)
        # "+": the alternative when set
        return "" if unset_or_empty else arg

    return _VAR.sub(repl, value)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_str(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(item, env) for key, item in node.items()}
    return node


def load_compose(env: Mapping[str, str]) -> dict[str, Any]:
    """docker-compose.yml with YAML anchors merged and ${...} interpolated from ``env``."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    result: dict[str, Any] = interpolate(raw, env)
    return result


def compose_environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {key: value for key, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def compose_module(service: Mapping[str, Any]) -> str | None:
    """The Parley package a compose service runs (``python -m parley_x``), else None."""
    command = service.get("command")
    if isinstance(command, list) and len(command) >= 3 and command[1] == "-m":
        module = str(command[2])
        if module in SERVICES.values():
            return module
    return None


# --- k8s ---------------------------------------------------------------------------------


@dataclass
class K8sDoc:
    path: Path
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def __repr__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.kind}/{self.name}"


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.rglob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs(include_examples: bool = True) -> list[K8sDoc]:
    docs = []
    for path in k8s_files():
        if not include_examples and ".example." in path.name:
            continue
        for body in yaml.safe_load_all(path.read_text()):
            if body:
                docs.append(K8sDoc(path, body))
    return docs


def container_module(container: Mapping[str, Any]) -> str | None:
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    if len(argv) >= 3 and argv[1] == "-m" and argv[2] in SERVICES.values():
        return str(argv[2])
    return None


def k8s_container_env(container: Mapping[str, Any], docs: list[K8sDoc]) -> dict[str, str]:
    """Names (and literal values or a description of the source) a container's env gets."""
    config_maps = {d.name: d.body.get("data") or {} for d in docs if d.kind == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref is not None:
            data = config_maps.get(ref["name"])
            assert data is not None, f"envFrom names a ConfigMap that is not there: {ref['name']}"
            prefix = source.get("prefix", "")
            env.update({prefix + key: str(value) for key, value in data.items()})
        else:
            raise AssertionError(f"unexpected envFrom source {source}: use explicit secretKeyRef")
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            env[item["name"]] = f"<from {sorted(item['valueFrom'])[0]}>"
    return env


# --- Dockerfiles -------------------------------------------------------------------------


def dockerfile(service: str) -> Path:
    return DOCKER_DIR / f"{service}.Dockerfile"


def dockerfile_final_stage(text: str) -> str:
    """The instructions of the last stage (what the image runs with)."""
    return re.split(r"^FROM\s", text, flags=re.M)[-1]


def dockerfile_env(text: str) -> dict[str, str]:
    """ENV of the final stage (``ENV A=1 \\ B=2`` form)."""
    stage = dockerfile_final_stage(text).replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in stage.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


# --- Settings introspection --------------------------------------------------------------


@dataclass
class ServiceSettings:
    service: str
    package: str
    classes: list[type[BaseSettings]] = field(default_factory=list)
    # env var name (upper case) -> "Class.field"
    env: dict[str, str] = field(default_factory=dict)


# A service's Settings extend pydantic-settings' BaseSettings directly or through the shared
# base of the services (parley_runtime.settings.ServiceSettings, whose fields they inherit).
SETTINGS_BASES = ("BaseSettings", "ServiceSettings")


def _settings_class_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
                if base_name in SETTINGS_BASES:
                    names.append(node.name)
    return names


def field_env_names(cls: type[BaseSettings]) -> dict[str, str]:
    """Env var names a pydantic-settings class reads, the way pydantic-settings derives them:
    validation_alias (str / AliasChoices / AliasPath head), else alias, else prefix + name."""
    prefix = str(cls.model_config.get("env_prefix", "") or "")
    names: dict[str, str] = {}
    for name, info in cls.model_fields.items():
        candidates: list[str] = []
        alias = info.validation_alias
        if isinstance(alias, str):
            candidates = [alias]
        elif isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    candidates.append(choice)
                elif isinstance(choice, AliasPath) and isinstance(choice.path[0], str):
                    candidates.append(choice.path[0])
        elif isinstance(alias, AliasPath) and isinstance(alias.path[0], str):
            candidates = [alias.path[0]]
        elif info.alias:
            candidates = [info.alias]
        else:
            candidates = [prefix + name]
        for candidate in candidates:
            names[candidate.upper()] = f"{cls.__name__}.{name}"
    return names


def service_settings(service: str) -> ServiceSettings:
    """Find every ``class X(BaseSettings)`` (or ``X(ServiceSettings)``) in the service's
    package and read its env names (inherited fields included)."""
    package = SERVICES[service]
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    root = Path(next(iter(spec.submodule_search_locations)))
    result = ServiceSettings(service, package)
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if not any(base in text for base in SETTINGS_BASES):
            continue
        class_names = _settings_class_names(path)
        if not class_names:
            continue
        relative = path.relative_to(root).with_suffix("")
        module_name = ".".join([package, *relative.parts])
        module = importlib.import_module(module_name)
        for class_name in class_names:
            cls = getattr(module, class_name)
            result.classes.append(cls)
            result.env.update(field_env_names(cls))
    return result


# --- docs/configuration.md ---------------------------------------------------------------


@dataclass
class DocRow:
    name: str
    read_by: set[str]
    default: str
    compose: str
    k8s: str


def config_doc_rows() -> dict[str, DocRow]:
    """The table between <!-- env-table:start --> and <!-- env-table:end -->:
    | Variable | Read by | Default | Compose | Kubernetes | Meaning |"""
    text = CONFIG_DOC.read_text()
    match = re.search(r"<!-- env-table:start -->(.*?)<!-- env-table:end -->", text, re.S)
    assert match, "docs/configuration.md has no env-table markers"
    rows: dict[str, DocRow] = {}
    for line in match.group(1).strip().splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = cells[0].strip("`")
        read_by = {part.strip() for part in cells[1].split(",") if part.strip()}
        rows[name] = DocRow(name, read_by, cells[2], cells[3], cells[4])
    return rows


def is_defaulted(cell: str) -> bool:
    """A Compose/Kubernetes cell starting with 'default' means: left to the service default
    on purpose (the deployment may still set it for some services)."""
    return cell.lower().startswith("default")


@pytest.fixture(scope="session")
def all_service_settings() -> dict[str, ServiceSettings]:
    return {service: service_settings(service) for service in SERVICES}


@pytest.fixture(scope="session")
def dt() -> ModuleType:
    """This module: the helpers above, for the test files."""
    return sys.modules[__name__]
