"""Every k8s manifest validates offline against the Kubernetes 1.31 OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail), and the objects fit together: selectors
match, probes and drain timing are right, HPAs and PDBs point at real workloads."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"


def _docs(dt: ModuleType) -> list[Any]:
    docs: list[Any] = dt.k8s_docs()
    return docs


def _workloads(dt: ModuleType) -> list[Any]:
    return [d for d in _docs(dt) if d.kind in ("Deployment", "StatefulSet")]


def _deployments(dt: ModuleType) -> dict[str, dict[str, Any]]:
    return {d.name: d.body for d in _docs(dt) if d.kind == "Deployment"}


def _container(body: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = body["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_every_manifest_validates_against_the_pinned_kubernetes_schema(dt: ModuleType) -> None:
    docs = _docs(dt)
    assert len(docs) >= 20, "expected the full set of manifests"
    failures = []
    for doc in docs:
        if str(doc.body.get("apiVersion", "")).startswith("cert-manager.io/"):
            continue  # a CRD (certificates.example.yaml): no pinned schema; checked below
        try:
            kubernetes_validate.validate(doc.body, dt.K8S_VERSION, strict=True)
        except (
            kubernetes_validate.ValidationError,
            kubernetes_validate.SchemaNotFoundError,
        ) as exc:
            failures.append(f"{doc!r}: {getattr(exc, 'message', exc)}")
    assert not failures, "\n".join(failures)


def test_the_validator_rejects_an_unknown_field(dt: ModuleType) -> None:
    """The check above can fail: a misspelt field in a Deployment is an error."""
    body = copy.deepcopy(_deployments(dt)["parley-gateway"])
    body["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(body, dt.K8S_VERSION, strict=True)


def test_every_object_is_namespaced_and_named_once(dt: ModuleType) -> None:
    seen: set[tuple[str, str, str]] = set()
    for doc in _docs(dt):
        if doc.kind == "Namespace":
            continue
        namespace = doc.body["metadata"].get("namespace")
        assert namespace, f"{doc!r} has no namespace"
        key = (doc.kind, namespace, doc.name)
        assert key not in seen, f"duplicate {key}"
        seen.add(key)


def test_kustomization_lists_every_manifest_except_the_examples(dt: ModuleType) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    for path in dt.k8s_files():
        relative = str(path.relative_to(K8S))
        if ".example." in path.name or relative.startswith("monitoring/"):
            assert relative not in listed, relative
        else:
            assert relative in listed, f"{relative} is not in k8s/kustomization.yaml"
    for relative in listed:
        assert (K8S / relative).is_file(), relative
    for generator in kustomization.get("configMapGenerator", []):
        for file in generator["files"]:
            assert (K8S / file).is_file(), file


def test_services_and_disruption_budgets_select_real_pods(dt: ModuleType) -> None:
    pod_labels = [d.body["spec"]["template"]["metadata"]["labels"] for d in _workloads(dt)]
    for doc in _docs(dt):
        if doc.kind == "Service":
            selector = doc.body["spec"]["selector"]
        elif doc.kind == "PodDisruptionBudget":
            selector = doc.body["spec"]["selector"]["matchLabels"]
        else:
            continue
        matches = [labels for labels in pod_labels if selector.items() <= labels.items()]
        assert matches, f"{doc!r} selects no pods"
    for workload in _workloads(dt):
        selector = workload.body["spec"]["selector"]["matchLabels"]
        labels = workload.body["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{workload!r}: selector does not match"


def test_parley_deployments_have_probes_resources_and_run_unprivileged(dt: ModuleType) -> None:
    deployments = _deployments(dt)
    assert set(deployments) == {"parley-gateway", "parley-conversation", "parley-agent-bridge"}
    for name, body in deployments.items():
        pod = body["spec"]["template"]["spec"]
        container = _container(body)
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert container["readinessProbe"]["httpGet"]["port"] in ports, name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        annotations = body["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert int(annotations["prometheus.io/port"]) in ports.values(), name


def _seconds(quantity: str) -> float:
    return float(quantity)


def test_gateway_drain_fits_in_the_termination_grace_period(dt: ModuleType) -> None:
    body = _deployments(dt)["parley-gateway"]
    pod = body["spec"]["template"]["spec"]
    container = _container(body)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pause = _seconds(pre_stop[1])
    env = dt.k8s_container_env(container, _docs(dt))
    drain = _seconds(env["PARLEY_GATEWAY_DRAIN_SECONDS"])
    shutdown_margin = 10.0
    assert pause + drain + shutdown_margin <= pod["terminationGracePeriodSeconds"], (
        f"preStop {pause}s + drain {drain}s + {shutdown_margin}s > grace period"
    )
    # Rolling updates never take a gateway away before its successor is ready.
    assert body["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_autoscalers_target_real_workloads_and_the_gateway_scales_on_connections(
    dt: ModuleType,
) -> None:
    deployments = _deployments(dt)
    hpas = {d.name: d.body for d in _docs(dt) if d.kind == "HorizontalPodAutoscaler"}
    assert set(hpas) == set(deployments)
    for name, hpa in hpas.items():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments, name
        deployment = deployments[target["name"]]
        assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"], name
        cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
        assert cpu and cpu[0]["resource"]["name"] == "cpu", f"{name} must scale on CPU"
    gateway_metrics = [
        m["pods"]["metric"]["name"]
        for m in hpas["parley-gateway"]["spec"]["metrics"]
        if m["type"] == "Pods"
    ]
    assert gateway_metrics == ["parley_gateway_connections"]


def test_nats_is_a_three_node_jetstream_cluster_with_matching_routes(dt: ModuleType) -> None:
    docs = _docs(dt)
    statefulset = next(d.body for d in docs if d.kind == "StatefulSet" and d.name == "nats")
    assert statefulset["spec"]["replicas"] == 3
    config_map = next(d.body for d in docs if d.kind == "ConfigMap" and d.name == "nats-config")
    conf = config_map["data"]["nats.conf"]
    assert "jetstream" in conf
    service = statefulset["spec"]["serviceName"]
    routes = re.findall(r"nats-route://([\w.-]+):6222", conf)
    assert routes == [f"nats-{i}.{service}.parley.svc.cluster.local" for i in range(3)]
    services = {d.name for d in docs if d.kind == "Service"}
    assert service in services and "nats" in services
    for deployment in _deployments(dt).values():
        env = dt.k8s_container_env(_container(deployment), docs)
        assert env["NATS_URL"].split(",") == [
            f"nats://nats-{i}.{service}.parley.svc.cluster.local:4222" for i in range(3)
        ]


def test_ingress_routes_to_the_gateway_service_with_websocket_timeouts(dt: ModuleType) -> None:
    docs = _docs(dt)
    ingress = next(d.body for d in docs if d.kind == "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert not any("affinity" in key for key in annotations), "no sticky sessions needed"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    gateway = next(d.body for d in docs if d.kind == "Service" and d.name == backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in gateway["spec"]["ports"]}


def _undefined_metrics(exprs: list[str]) -> list[str]:
    """parley_* names in PromQL expressions that no service source defines."""
    sources = "\n".join(
        path.read_text() for path in (REPO / "services").rglob("src/**/*.py") if path.is_file()
    )
    used = {name for expr in exprs for name in re.findall(r"\bparley_[a-z0-9_]+", expr)}
    assert used
    missing = []
    for name in sorted(used):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        base = re.sub(r"_total$", "", base)
        if not re.search(rf"[\"']{base}(_total)?[\"']", sources):
            missing.append(name)
    return missing


def test_grafana_dashboard_uses_only_metrics_the_services_define() -> None:
    dashboard = json.loads((K8S / "monitoring" / "parley-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("connections", "deliveries", "latency", "drops", "presence"):
        assert topic in titles, f"the dashboard has no {topic} panel"
    assert not _undefined_metrics(exprs), "the dashboard queries metrics no service defines"


def test_alert_rules_use_only_metrics_the_services_define() -> None:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert exprs
    assert not _undefined_metrics(exprs), "an alert queries metrics no service defines"


def test_every_drain_setting_fits_in_its_grace_period(
    dt: ModuleType, all_service_settings: dict[str, Any]
) -> None:
    """For every service that reads a *_DRAIN_SECONDS setting, the value the pod gets (or
    the Settings default) plus its preStop pause and a shutdown margin fits before SIGKILL."""
    docs = _docs(dt)
    services: dict[str, str] = dt.SERVICES
    checked = 0
    for body in _deployments(dt).values():
        container = _container(body)
        module = dt.container_module(container)
        service = next(name for name, package in services.items() if package == module)
        settings = all_service_settings[service]
        env = dt.k8s_container_env(container, docs)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        pause = float(pre_stop["command"][1]) if pre_stop else 0.0
        for name, field in settings.env.items():
            if not name.endswith("_DRAIN_SECONDS"):
                continue
            cls = next(c for c in settings.classes if c.__name__ == field.split(".")[0])
            default = cls.model_fields[field.split(".")[1]].default
            drain = float(env.get(name, default))
            grace = body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            assert pause + drain + 10 <= grace, (service, name, drain, grace)
            checked += 1
    assert checked >= 2, "the gateway and the conversation service both drain"


def _mounted_secret(body: dict[str, Any], path: str) -> dict[str, Any]:
    """The secret volume mounted at ``path`` in the workload's only container."""
    mounts = {m["mountPath"]: m["name"] for m in _container(body).get("volumeMounts", [])}
    assert path in mounts, f"nothing is mounted at {path}"
    volumes = {v["name"]: v for v in body["spec"]["template"]["spec"]["volumes"]}
    secret: dict[str, Any] = volumes[mounts[path]]["secret"]
    return secret


def test_traffic_that_leaves_a_pod_is_tls(dt: ModuleType) -> None:
    """Issue 18: NATS serves clients over TLS from a cert-manager-style Secret; every Parley
    service trusts its CA and reaches MongoDB over TLS; only CA certificates reach them."""
    docs = _docs(dt)
    nats = next(d.body for d in docs if d.kind == "StatefulSet" and d.name == "nats")
    args = _container(nats)["args"]
    assert "--tls" in args
    cert = next(a.split("=", 1)[1] for a in args if a.startswith("--tlscert="))
    key = next(a.split("=", 1)[1] for a in args if a.startswith("--tlskey="))
    assert Path(cert).parent == Path(key).parent
    assert _mounted_secret(nats, str(Path(cert).parent))["secretName"] == "parley-nats-tls"

    configs = {d.name: d.body["data"] for d in docs if d.kind == "ConfigMap"}
    hosts: set[str] = set()
    for name, body in _deployments(dt).items():
        data = configs[name]
        assert data["MONGODB_TLS"] == "true", name
        for setting, secret_name in (
            ("NATS_CA", "parley-nats-tls"),
            ("MONGODB_TLS_CA_FILE", "parley-mongodb-tls"),
        ):
            secret = _mounted_secret(body, str(Path(data[setting]).parent))
            assert secret["secretName"] == secret_name, (name, setting)
            # only the CA certificate, never a server's private key
            assert secret["items"] == [{"key": "ca.crt", "path": Path(data[setting]).name}]
        hosts |= {u.split("://", 1)[1].rsplit(":", 1)[0] for u in data["NATS_URL"].split(",")}

    certificate = next(
        d.body
        for d in docs
        if d.kind == "Certificate" and d.body["spec"]["secretName"] == "parley-nats-tls"
    )
    names = certificate["spec"]["dnsNames"]
    for host in hosts:  # every address the services dial is in the certificate
        rest = host.partition(".")[2]
        assert host in names or f"*.{rest}" in names, host
