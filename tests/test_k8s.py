"""Kubernetes manifests per rollout strategy: what each one routes where, checked against
the schemas of Kubernetes itself (kubernetes-validate, strict) and of the custom resources
(Argo Rollouts, Istio, Gateway API: their CRD schemas, strict, through tests/k8s/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import require_component

import nbdeploy
from nbdeploy.deployment import traffic
from nbdeploy.deployment.store import DeploymentStore, Version
from nbdeploy.k8s import K8sOptions, ManifestError, manifests, to_yaml
from nbdeploy.store import default_store

SCHEMAS = Path(__file__).parent / "k8s"
CUSTOM_GROUPS = ("argoproj.io/", "networking.istio.io/", "gateway.networking.k8s.io/")


# -- schema validation -------------------------------------------------------------------
def schema_errors(objects: list[dict[str, Any]]) -> list[str]:
    """Every schema error of ``objects``, as "Kind/name: error"."""
    import kubernetes_validate

    errors: list[str] = []
    custom = [obj for obj in objects if obj["apiVersion"].startswith(CUSTOM_GROUPS)]
    for obj in objects:
        if obj in custom:
            continue
        try:
            kubernetes_validate.validate(obj, "1.33", strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message}")
    if custom:
        errors += _custom_errors(custom)
    return errors


def _custom_errors(objects: list[dict[str, Any]]) -> list[str]:
    node = shutil.which("node")
    require_component("node", node is not None, "install Node.js (make test does)")
    require_component(
        "the CRD schemas",
        (SCHEMAS / "node_modules" / "@kubernetes-models").is_dir(),
        "run make test (npm ci in tests/k8s)",
    )
    path = SCHEMAS / f".manifests-{os.getpid()}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(objects))
    try:
        completed = subprocess.run(
            [str(node), str(SCHEMAS / "validate.js"), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        path.unlink()
    return [
        f"{entry['kind']}/{entry['name']}: {error}"
        for entry in json.loads(completed.stdout)
        for error in entry["errors"]
    ]


# -- a deployment's versions in the store -----------------------------------------------
def add_versions(
    tmp_path: Path, name: str = "churn", count: int = 2, live: int | None = None
) -> DeploymentStore:
    deployments = DeploymentStore(default_store())
    deployments.ensure(name, "127.0.0.1", 8123)
    for number in range(1, count + 1):
        folder = tmp_path / f"{name}-v{number}"
        folder.mkdir()
        (folder / "model.bin").write_bytes(b"\0" * (3 * 2**20))
        deployments.add_version(
            Version(
                deployment=name,
                version=0,
                content_hash=f"{number:064x}",
                bento_tag=f"nbd-{name}:{number:016x}",
                function="predict",
                service_dir=str(folder),
                created_at=time.time(),
                options={"workers": 2},
            )
        )
    deployments.set_state(name, status="serving", live_version=live or count)
    return deployments


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


# -- every strategy writes valid objects ------------------------------------------------
@pytest.mark.parametrize("mesh", ["istio", "gateway-api"])
@pytest.mark.parametrize("strategy", ["rolling", "blue-green", "canary", "ab", "shadow"])
def test_every_strategy_is_schema_valid(tmp_path: Path, strategy: str, mesh: str) -> None:
    add_versions(tmp_path, count=3, live=2)
    options = K8sOptions(strategy=strategy, mesh=mesh, namespace="ml", max_replicas=6)
    result = manifests("churn", options)
    assert result.objects
    assert schema_errors(result.objects) == []
    assert all(obj["metadata"].get("namespace") == "ml" for obj in result.objects)


def test_the_validators_refuse_what_a_cluster_would_not_take(tmp_path: Path) -> None:
    """The schema checks are strict: a misspelt field or a wrong type is an error."""
    add_versions(tmp_path)
    objects = manifests("churn", K8sOptions(strategy="canary")).objects
    rollout = by_kind(objects, "Rollout")[0]
    rollout["spec"]["strategy"]["canary"]["stepz"] = rollout["spec"]["strategy"]["canary"].pop(
        "steps"
    )
    service = by_kind(objects, "Service")[0]
    service["spec"]["ports"][0]["port"] = "eighty"
    deployment_like = manifests("churn", K8sOptions()).objects[0]
    deployment_like["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    errors = schema_errors([rollout, service, deployment_like])
    assert any("Rollout/churn" in e and "stepz" in e for e in errors), errors
    assert any("Service/churn-stable" in e for e in errors), errors
    assert any("Deployment/churn" in e and "portz" in e for e in errors), errors


# -- what each strategy routes where ----------------------------------------------------
def test_rolling_runs_the_live_version_safely(tmp_path: Path) -> None:
    add_versions(tmp_path, count=3, live=2)
    objects = manifests("churn", K8sOptions(replicas=3, max_replicas=9)).objects
    assert [obj["kind"] for obj in objects] == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
    ]
    deployment = objects[0]
    assert deployment["metadata"]["name"] == "churn"
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "nbdeploy/churn:v2"  # what serves, not the newest
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["ports"][0]["containerPort"] == 3000
    # two workers of a 3 MiB model: at least the 512Mi floor, requested and the limit
    assert container["resources"]["requests"]["memory"] == "640Mi"
    assert container["resources"]["limits"]["memory"] == "640Mi"
    assert container["resources"]["requests"]["cpu"] == "500m"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["automountServiceAccountToken"] is False
    assert objects[1]["spec"]["scaleTargetRef"]["name"] == "churn"
    assert objects[1]["spec"]["maxReplicas"] == 9
    service = objects[3]
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "churn"}


def test_blue_green_sends_everything_to_the_new_version_and_keeps_the_old(
    tmp_path: Path,
) -> None:
    add_versions(tmp_path, count=2, live=1)
    objects = manifests("churn", K8sOptions(strategy="blue-green")).objects
    names = [obj["metadata"]["name"] for obj in by_kind(objects, "Deployment")]
    assert names == ["churn-v1", "churn-v2"]
    route = by_kind(objects, "VirtualService")[0]["spec"]["http"][0]["route"]
    assert [(r["destination"]["host"], r["weight"]) for r in route] == [
        ("churn-v1", 0),
        ("churn-v2", 100),
    ]
    services = {s["metadata"]["name"]: s["spec"]["selector"] for s in by_kind(objects, "Service")}
    assert services["churn-v2"] == {
        "app.kubernetes.io/name": "churn",
        "app.kubernetes.io/version": "v2",
    }
    assert services["churn"] == {"app.kubernetes.io/name": "churn"}


def test_canary_is_an_argo_rollout_with_the_local_analysis(tmp_path: Path) -> None:
    add_versions(tmp_path, count=2, live=1)
    options = K8sOptions(strategy="canary", steps=[5, 20, 60, 100], interval=120)
    result = manifests("churn", options)
    rollout = by_kind(result.objects, "Rollout")[0]
    canary = rollout["spec"]["strategy"]["canary"]
    assert canary["steps"] == [
        {"setWeight": 5},
        {"pause": {"duration": "120s"}},
        {"setWeight": 20},
        {"pause": {"duration": "120s"}},
        {"setWeight": 60},
        {"pause": {"duration": "120s"}},
    ]
    assert canary["trafficRouting"] == {
        "istio": {"virtualService": {"name": "churn", "routes": ["primary"]}}
    }
    assert rollout["spec"]["template"]["spec"]["containers"][0]["image"] == "nbdeploy/churn:v2"
    template = by_kind(result.objects, "AnalysisTemplate")[0]
    assert canary["analysis"]["templates"] == [{"templateName": template["metadata"]["name"]}]
    metrics = {m["name"]: m for m in template["spec"]["metrics"]}
    assert metrics["success-rate"]["successCondition"] == "result >= 0.99"
    query = metrics["success-rate"]["provider"]["prometheus"]["query"]
    assert 'http_response_code!~"5.."' in query and "bentoml_service_request_total" in query
    latency = metrics["p99-latency"]["provider"]["prometheus"]["query"]
    assert "clamp_min(1.5 * histogram_quantile(0.99" in latency and ", 0.5)" in latency
    assert "{{args.canary-hash}}" in latency and "{{args.stable-hash}}" in latency
    assert any("Argo Rollouts" in notice for notice in result.notices)

    gateway = manifests("churn", K8sOptions(strategy="canary", mesh="gateway-api")).objects
    routing = by_kind(gateway, "Rollout")[0]["spec"]["strategy"]["canary"]["trafficRouting"]
    assert routing == {"plugins": {"argoproj-labs/gatewayAPI": {"httpRoute": "churn"}}}
    backends = by_kind(gateway, "HTTPRoute")[0]["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [
        ("churn-stable", 100),
        ("churn-canary", 0),
    ]


def test_shadow_mirrors_to_the_new_version_and_answers_from_the_live_one(
    tmp_path: Path,
) -> None:
    add_versions(tmp_path, count=2, live=1)
    objects = manifests("churn", K8sOptions(strategy="shadow", weight=25)).objects
    http = by_kind(objects, "VirtualService")[0]["spec"]["http"][0]
    assert [(r["destination"]["host"], r["weight"]) for r in http["route"]] == [("churn-v1", 100)]
    assert http["mirror"]["host"] == "churn-v2"
    assert http["mirrorPercentage"] == {"value": 25.0}

    gateway = manifests("churn", K8sOptions(strategy="shadow", mesh="gateway-api")).objects
    rule = by_kind(gateway, "HTTPRoute")[0]["spec"]["rules"][0]
    assert rule["filters"] == [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "churn-v2", "port": 80}}}
    ]
    with pytest.raises(ManifestError, match="mirrors every request") as caught:
        manifests("churn", K8sOptions(strategy="shadow", mesh="gateway-api", weight=25))
    assert "--mesh istio" in (caught.value.hint or "")


def test_ab_keeps_the_local_split_and_names_each_arm(tmp_path: Path) -> None:
    add_versions(tmp_path, count=3, live=2)
    traffic.write_config(
        "churn", {"mode": "ab", "weights": {"v2": 70.0, "v3": 30.0}, "sticky": {"header": "X-U"}}
    )
    result = manifests("churn", K8sOptions(strategy="ab", mesh="gateway-api"))
    backends = by_kind(result.objects, "HTTPRoute")[0]["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [("churn-v2", 70), ("churn-v3", 30)]
    assert backends[1]["filters"][0]["responseHeaderModifier"]["set"] == [
        {"name": "X-Nbdeploy-Version", "value": "v3"}
    ]
    assert any("sticky" in notice for notice in result.notices)
    istio = manifests("churn", K8sOptions(strategy="ab", weight=10)).objects
    route = by_kind(istio, "VirtualService")[0]["spec"]["http"][0]["route"]
    assert [r["weight"] for r in route] == [90, 10]
    assert route[0]["headers"]["response"]["set"] == {"X-Nbdeploy-Version": "v2"}


# -- bad requests get clear errors ------------------------------------------------------
def test_clear_errors(tmp_path: Path) -> None:
    add_versions(tmp_path, count=1)
    with pytest.raises(ManifestError, match="needs two versions of churn"):
        manifests("churn", K8sOptions(strategy="shadow"))
    with pytest.raises(ManifestError, match="--namespace 'ML_team'"):
        manifests("churn", K8sOptions(namespace="ML_team"))
    with pytest.raises(ManifestError, match="--memory '1 GB'"):
        manifests("churn", K8sOptions(memory="1 GB"))
    with pytest.raises(ManifestError, match="--candidate 7: churn has no version 7"):
        manifests("churn", K8sOptions(candidate=7))
    with pytest.raises(ManifestError, match="--prometheus"):
        manifests("churn", K8sOptions(prometheus="http://x/$(reboot)"))
    with pytest.raises(nbdeploy.errors.NbdeployError, match="no deployment named 'other'"):
        manifests("other")
    add_versions(tmp_path, name="fraud", count=2, live=1)
    with pytest.raises(ManifestError, match="names one image, but these manifests run 2"):
        manifests("fraud", K8sOptions(strategy="blue-green", image="reg.example.com/fraud:1"))
    with pytest.raises(ManifestError, match="is not an image reference"):
        manifests("fraud", K8sOptions(image="Reg Example/fraud"))
    objects = manifests("fraud", K8sOptions(image="reg.example.com:5000/ml/fraud")).objects
    assert objects[0]["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "reg.example.com:5000/ml/fraud:v1"  # the live version
    )


# -- the faces: command line and Python -------------------------------------------------
def test_cli_writes_a_file_per_object_and_replaces_its_own(tmp_path: Path, cli: Any) -> None:
    add_versions(tmp_path, count=2, live=1)
    out = tmp_path / "manifests"
    out.mkdir()
    (out / "kustomization.yaml").write_text("resources: []\n")  # the user's own: kept
    done = cli("k8s", "churn", "--strategy", "canary", "--out", str(out), "--json")
    assert done.code == 0, done.err
    report = done.json
    kinds = [obj["kind"] for obj in report["objects"]]
    assert kinds[0] == "AnalysisTemplate" and "Rollout" in kinds
    assert sorted(p.name for p in out.glob("*.yaml")) == sorted(
        [Path(f).name for f in report["files"]] + ["kustomization.yaml"]
    )
    assert "Argo Rollouts" in done.err
    again = cli("k8s", "churn", "--out", str(out), "--json")
    assert again.code == 0, again.err
    left = sorted(p.name for p in out.glob("*.yaml"))
    assert left == ["01-deployment-churn.yaml", "02-poddisruptionbudget-churn.yaml",
                    "03-service-churn.yaml", "kustomization.yaml"]  # fmt: skip

    stream = cli("k8s", "churn", "--strategy", "blue-green", "--mesh", "gateway-api")
    assert stream.code == 0, stream.err
    import yaml

    documents = list(yaml.safe_load_all(stream.out))
    assert [d["kind"] for d in documents][-1] == "HTTPRoute"
    assert schema_errors(documents) == []

    refused = cli("k8s", "churn", "--replicas", "0")
    assert refused.code == 2
    assert "--replicas 0: between 1 and 1000" in refused.err
    assert "Traceback" not in refused.err


def test_python_api(tmp_path: Path) -> None:
    add_versions(tmp_path, count=2, live=1)
    result = nbdeploy.kubernetes("churn", out=tmp_path / "k8s", strategy="ab", weight=20)
    assert (tmp_path / "k8s" / ".nbdeploy-k8s").exists()
    assert to_yaml(result.objects).count("\n---\n") == len(result.objects) - 1
    with pytest.raises(ManifestError, match="unexpected keyword argument 'replica'"):
        nbdeploy.kubernetes("churn", replica=3)
