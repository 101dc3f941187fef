"""Kubernetes manifests per rollout strategy: what each one routes where, checked against
the schemas of Kubernetes itself (kubernetes-validate, strict) and of the custom resources
(Argo Rollouts, Istio, Gateway API: their CRD schemas, strict, through tests/k8s/).

Pipelines: the Job, CronJob and Indexed Job (sweep) that run ``nbdeploy run``, for every
combination of their options; the pod's command run here, as Kubernetes would run it, to
show that the completion index picks the combination and the values arrive intact.
``--apply``: no cluster can run here, so it is tested for its errors (no kubeconfig, an
unreachable server, refused credentials or objects) and, against a recording API server
on 127.0.0.1, for the requests it sends."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import VENV_BIN, require_component

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
    options = K8sOptions(strategy=strategy, mesh=mesh, namespace="ml", max_replicas=6, candidate=3)
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
    objects = manifests("churn", K8sOptions(strategy="blue-green", candidate=2)).objects
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
    options = K8sOptions(strategy="canary", candidate=2, steps=[5, 20, 60, 100], interval=120)
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
    objects = manifests("churn", K8sOptions(strategy="shadow", candidate=2, weight=25)).objects
    http = by_kind(objects, "VirtualService")[0]["spec"]["http"][0]
    assert [(r["destination"]["host"], r["weight"]) for r in http["route"]] == [("churn-v1", 100)]
    assert http["mirror"]["host"] == "churn-v2"
    assert http["mirrorPercentage"] == {"value": 25.0}

    gateway = manifests(
        "churn", K8sOptions(strategy="shadow", candidate=2, mesh="gateway-api")
    ).objects
    rule = by_kind(gateway, "HTTPRoute")[0]["spec"]["rules"][0]
    assert rule["filters"] == [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "churn-v2", "port": 80}}}
    ]
    with pytest.raises(ManifestError, match="mirrors every request") as caught:
        manifests(
            "churn", K8sOptions(strategy="shadow", candidate=2, mesh="gateway-api", weight=25)
        )
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


# -- by default, what the deployment does here ------------------------------------------
def rolled_back(tmp_path: Path) -> DeploymentStore:
    """churn deployed as v1, v2, v3, then rolled back to v1: v3 is kept warm (a standby)."""
    deployments = add_versions(tmp_path, count=3, live=1)
    for number, role in ((3, "standby"), (1, "live")):
        deployments.add_server(
            "churn", number, pid=None, start_ticks=None, host="127.0.0.1",
            port=9000 + number, log_path=str(tmp_path / f"v{number}.log"), role=role,
        )  # fmt: skip
    return deployments


def images(objects: list[dict[str, Any]]) -> list[str]:
    kinds = ("Deployment", "Rollout")
    return [container_of(obj)["image"] for obj in objects if obj["kind"] in kinds]


def route_weights(objects: list[dict[str, Any]]) -> list[tuple[str, int]]:
    route = by_kind(objects, "VirtualService")[0]["spec"]["http"][0]["route"]
    return [(r["destination"]["host"], r["weight"]) for r in route]


def test_manifests_serve_the_live_version_not_the_newest(tmp_path: Path) -> None:
    rolled_back(tmp_path)
    assert images(manifests("churn").objects) == ["nbdeploy/churn:v1"]

    result = manifests("churn", K8sOptions(strategy="blue-green"))
    assert route_weights(result.objects) == [("churn-v3", 0), ("churn-v1", 100)]
    assert any(
        "v1 takes all traffic, as it is live here; v3 keeps running for a rollback" in notice
        and "name a version to roll out with --candidate N (versions: v2, v3)" in notice
        for notice in result.notices
    ), result.notices

    result = manifests("churn", K8sOptions(strategy="canary"))
    assert images(result.objects) == ["nbdeploy/churn:v1"]
    assert any(
        "no canary, A/B test or shadow of churn is in progress here: the Rollout runs v1, "
        "the live version; name a version to roll out with --candidate N" in notice
        for notice in result.notices
    ), result.notices

    for strategy in ("ab", "shadow"):
        with pytest.raises(ManifestError) as caught:
            manifests("churn", K8sOptions(strategy=strategy))
        assert caught.value.message == (
            f"--strategy {strategy} needs a version to try beside v1, the live version of "
            "churn, and none is tried here (no canary, A/B test or shadow in progress)"
        )
        assert caught.value.hint == "name the version to try with --candidate N (versions: v2, v3)"

    # A version to roll out is an explicit choice.
    chosen = manifests("churn", K8sOptions(strategy="ab", candidate=3)).objects
    assert route_weights(chosen) == [("churn-v1", 50), ("churn-v3", 50)]
    chosen = manifests("churn", K8sOptions(strategy="blue-green", candidate=2)).objects
    assert route_weights(chosen) == [("churn-v1", 0), ("churn-v2", 100)]
    assert images(manifests("churn", K8sOptions(candidate=3)).objects) == ["nbdeploy/churn:v3"]


def test_the_cli_follows_the_live_version_and_says_how_to_name_another(
    tmp_path: Path, cli: Any
) -> None:
    import yaml

    rolled_back(tmp_path)
    done = cli("k8s", "churn", "--strategy", "shadow")
    assert done.code == 2, done
    assert "--strategy shadow needs a version to try beside v1" in done.err
    assert "--candidate N (versions: v2, v3)" in done.err and "Traceback" not in done.err
    done = cli("k8s", "churn", "--strategy", "canary")
    assert done.code == 0, done.err
    assert images(list(yaml.safe_load_all(done.out))) == ["nbdeploy/churn:v1"]
    assert "the Rollout runs v1, the live version" in done.err
    helped = cli("k8s", "--help")
    assert "--candidate N" in helped.out and "version to roll out" in helped.out


def start_canary_here(name: str, version: int, stable: int, share: float) -> None:
    """What a canary of ``version`` at ``share`` percent leaves here: the router's split
    and the running plan."""
    from nbdeploy.deployment.traffic.strategies.canary import CanaryPlan, write_plan

    traffic.write_config(
        name,
        {"mode": "split", "weights": {f"v{stable}": 100 - share, f"v{version}": share},
         "shadow": None, "sticky": None},
    )  # fmt: skip
    write_plan(
        CanaryPlan(name=name, version=version, stable=stable, candidate_server=2,
                   stable_server=1, steps=[10, 20, 50, 100], interval=30, keep_warm=60)
    )  # fmt: skip


@pytest.mark.parametrize("mesh", ["istio", "gateway-api"])
def test_a_canary_in_progress_here_keeps_its_version_and_weights(tmp_path: Path, mesh: str) -> None:
    """v1 is live, the canary tries v2 at 20% (v3, the newest, is not in it)."""
    add_versions(tmp_path, count=3, live=1)
    start_canary_here("churn", version=2, stable=1, share=20)

    result = manifests("churn", K8sOptions(strategy="canary", mesh=mesh))
    assert images(result.objects) == ["nbdeploy/churn:v2"]
    canary = by_kind(result.objects, "Rollout")[0]["spec"]["strategy"]["canary"]
    assert canary["steps"] == [  # from its share here on, at its pace here
        {"setWeight": 20},
        {"pause": {"duration": "30s"}},
        {"setWeight": 50},
        {"pause": {"duration": "30s"}},
    ]
    assert any(
        "the Rollout runs v2, in a canary (v1 80% · v2 20%) here: applied over the Rollout "
        "of v1 (the live version)"
        in notice
        and "write v1's first with --candidate 1" in notice
        for notice in result.notices
    ), result.notices
    assert schema_errors(result.objects) == []

    ab = manifests("churn", K8sOptions(strategy="ab", mesh=mesh)).objects
    shadow = manifests("churn", K8sOptions(strategy="shadow")).objects
    blue_green = manifests("churn", K8sOptions(strategy="blue-green")).objects
    if mesh == "istio":
        assert route_weights(ab) == [("churn-v1", 80), ("churn-v2", 20)]
    else:
        backends = by_kind(ab, "HTTPRoute")[0]["spec"]["rules"][0]["backendRefs"]
        assert [(b["name"], b["weight"]) for b in backends] == [("churn-v1", 80), ("churn-v2", 20)]
    http = by_kind(shadow, "VirtualService")[0]["spec"]["http"][0]
    assert route_weights(shadow) == [("churn-v1", 100)]
    assert http["mirror"]["host"] == "churn-v2"
    assert http["mirrorPercentage"] == {"value": 100.0}
    assert route_weights(blue_green) == [("churn-v2", 0), ("churn-v1", 100)]
    assert images(manifests("churn").objects) == ["nbdeploy/churn:v1"]
    # Named, another version is rolled out instead.
    named = manifests("churn", K8sOptions(strategy="ab", candidate=3)).objects
    assert route_weights(named) == [("churn-v1", 50), ("churn-v3", 50)]


def test_an_ab_test_or_shadow_in_progress_here_keeps_its_split(tmp_path: Path) -> None:
    add_versions(tmp_path, count=3, live=1)
    traffic.write_config(
        "churn",
        {"mode": "ab", "weights": {"v1": 60.0, "v2": 40.0}, "sticky": {"header": "X-U"},
         "experiment": "v2-vs-v1-20250101-000000"},
    )  # fmt: skip
    result = manifests("churn", K8sOptions(strategy="ab"))
    assert route_weights(result.objects) == [("churn-v1", 60), ("churn-v2", 40)]
    assert any(
        "v2 is the version in an A/B test (v1 60% · v2 40% (A/B v2-vs-v1-20250101-000000)) "
        "here: v1 60%, v2 40%" in notice
        for notice in result.notices
    ), result.notices
    assert any("sticky" in notice for notice in result.notices)
    canary = manifests("churn", K8sOptions(strategy="canary")).objects
    steps = by_kind(canary, "Rollout")[0]["spec"]["strategy"]["canary"]["steps"]
    assert [step["setWeight"] for step in steps if "setWeight" in step] == [40, 50]

    traffic.write_config(
        "churn",
        {"mode": "split", "weights": {"v1": 100.0}, "shadow": {"version": "v2", "percent": 30},
         "sticky": None},
    )  # fmt: skip
    shadow = manifests("churn", K8sOptions(strategy="shadow")).objects
    http = by_kind(shadow, "VirtualService")[0]["spec"]["http"][0]
    assert route_weights(shadow) == [("churn-v1", 100)]
    assert (http["mirror"]["host"], http["mirrorPercentage"]) == ("churn-v2", {"value": 30.0})
    ab = manifests("churn", K8sOptions(strategy="ab")).objects
    assert route_weights(ab) == [("churn-v1", 50), ("churn-v2", 50)]
    assert route_weights(manifests("churn", K8sOptions(strategy="blue-green")).objects) == [
        ("churn-v2", 0),
        ("churn-v1", 100),
    ]

    # A stopped deployment tries nothing: its router's configuration is from before.
    DeploymentStore(default_store()).set_state("churn", status="stopped", live_version=1)
    with pytest.raises(ManifestError, match="none is tried here"):
        manifests("churn", K8sOptions(strategy="ab"))


# -- bad requests get clear errors ------------------------------------------------------
def test_clear_errors(tmp_path: Path) -> None:
    add_versions(tmp_path, count=1)
    with pytest.raises(ManifestError, match="needs a version to try beside v1") as caught:
        manifests("churn", K8sOptions(strategy="shadow"))
    assert "deploy another version first" in (caught.value.hint or "")
    with pytest.raises(ManifestError, match="needs two versions of churn"):
        manifests("churn", K8sOptions(strategy="shadow", candidate=1))
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
        manifests(
            "fraud",
            K8sOptions(strategy="blue-green", candidate=2, image="reg.example.com/fraud:1"),
        )
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
    result = nbdeploy.kubernetes(
        "churn", out=tmp_path / "k8s", strategy="ab", candidate=2, weight=20
    )
    assert (tmp_path / "k8s" / ".nbdeploy-k8s").exists()
    assert to_yaml(result.objects).count("\n---\n") == len(result.objects) - 1
    with pytest.raises(ManifestError, match="unexpected keyword argument 'replica'"):
        nbdeploy.kubernetes("churn", replica=3)


# -- pipelines: a Job, a CronJob, an Indexed Job per sweep ------------------------------
TRAIN = [
    (
        "n: int = 1  # trees\nscale: float = 1.0\nnote: str = ''\nlabel: str = 'a'",
        ["parameters"],
    ),
    "import nbdeploy\n"
    "nbdeploy.log_metric('product', n * scale)\n"
    "nbdeploy.log_param('note_seen', note)\n"
    "nbdeploy.log_param('label_seen', label)",
]
PREPARE = [
    ("rows: int = 3\ndata_path: str = 'rows.txt'", ["parameters"]),
    "from pathlib import Path\nPath(data_path).write_text('x\\n' * rows)",
]
PIPELINE_YAML = """\
steps:
  - name: prepare
    notebook: prepare.ipynb
    outputs: {data_path: data/rows.txt}
  - name: train
    notebook: Train Model.ipynb
    needs: [prepare]
"""
# Shell syntax, a newline, quotes and Kubernetes' own $(VAR) and $$: all of it must reach
# the notebook as written, as one argument.
HOSTILE = "$(rm -rf /)\n`reboot`; echo $HOME ${PATH} $(NBDEPLOY_HOME) $$ 'it\"s' && exit 1"


@pytest.fixture
def project(tmp_path: Path, make_notebook: Any) -> Path:
    """A project folder: a notebook, a second one and the pipeline.yaml of both."""
    folder = tmp_path / "churn project"
    make_notebook("Train Model.ipynb", TRAIN, folder=folder)
    make_notebook("prepare.ipynb", PREPARE, folder=folder)
    (folder / "pipeline.yaml").write_text(PIPELINE_YAML, encoding="utf-8")
    return folder


def container_of(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return spec["template"]["spec"]["containers"][0]


def job_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]


def kubelet_expansion(text: str, env: dict[str, str]) -> str:
    """What Kubernetes makes of a container's args and env values: ``$(NAME)`` of a
    defined variable is its value, ``$$`` is ``$``, anything else stays as written
    (k8s.io/kubernetes third_party/forked/golang/expansion)."""

    def expand(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([^)]*)\)", expand, text)


PIPELINE_CASES: dict[str, dict[str, Any]] = {
    "job": {},
    "job with a claim, MLflow and limits": {
        "parameters": {"n": 5, "note": HOSTILE},
        "output_claim": "nbdeploy-runs",
        "mlflow_uri": "http://mlflow.ml.svc.cluster.local:5000",
        "timeout": 3600,
        "retries": 2,
        "cpu": "2",
        "memory": "4Gi",
        "namespace": "ml",
        "image": "registry.example.com:5000/ml/train:1.2",
        "workdir": "/srv/app",
    },
    "sweep": {"sweep": ["n=1,2,3", "scale=[0.5, 2.0]"], "parallel": 4},
    "sweep with a claim": {"sweep": ["n=1,2"], "output_claim": "runs", "retries": 1},
    "cronjob": {"schedule": "0 3 * * *"},
    "cronjob of a sweep with a claim": {
        "schedule": "*/15 * * * mon-fri",
        "sweep": ["n=1,2"],
        "output_claim": "runs",
        "timeout": 600,
    },
    "pipeline.yaml": {"target": "pipeline.yaml", "parallel": 2, "parameters": {"rows": 7}},
    "pipeline.yaml on a schedule": {
        "target": "pipeline.yaml",
        "schedule": "@hourly",
        "output_claim": "runs",
        "mlflow_uri": "databricks",
    },
}


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_every_pipeline_job_is_schema_valid(project: Path, case: str) -> None:
    options = dict(PIPELINE_CASES[case])
    target = project / options.pop("target", "Train Model.ipynb")
    result = nbdeploy.kubernetes(pipeline=target, **options)
    assert len(result.objects) == 1
    assert schema_errors(result.objects) == []
    job = result.objects[0]
    assert job["kind"] == ("CronJob" if "schedule" in options else "Job")
    assert job["metadata"]["name"] == ("churn-project" if "yaml" in case else "train-model")
    pod = job_spec(job)["template"]["spec"]
    container = container_of(job)
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["command"] == ["nbdeploy"]
    assert container["args"][0] == "run"
    if options.get("namespace"):
        assert job["metadata"]["namespace"] == options["namespace"]


def test_a_job_runs_nbdeploy_run_with_the_parameters(project: Path) -> None:
    notebook = project / "Train Model.ipynb"
    job = nbdeploy.kubernetes(pipeline=notebook, parameters={"n": 5, "scale": 0.5}).objects[0]
    spec = job["spec"]
    assert spec["backoffLimit"] == 0  # a failed run is not run again unless asked
    assert spec["ttlSecondsAfterFinished"] == 86400
    assert "activeDeadlineSeconds" not in spec and "completionMode" not in spec
    bad_input = spec["podFailurePolicy"]["rules"][1]
    assert bad_input["action"] == "FailJob" and bad_input["onExitCodes"]["values"] == [2]
    container = container_of(job)
    assert container["image"] == "nbdeploy/pipeline-train-model:latest"
    assert container["workingDir"] == "/home/nbdeploy/work"
    assert container["args"] == [
        "run", "/home/nbdeploy/work/Train Model.ipynb", "--log-output",
        "-p", "n", "5", "-p", "scale", "0.5",
    ]  # fmt: skip
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NBDEPLOY_HOME"] == "/var/lib/nbdeploy/home"
    assert "MLFLOW_TRACKING_URI" not in env
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"memory": "2Gi"},
    }
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["home"] == {"name": "home", "emptyDir": {}}

    options = {
        "timeout": 90.5,
        "retries": 2,
        "output_claim": "runs",
        "mlflow_uri": "http://mlflow:5000",
        "workdir": "/srv/app/",
        "job_name": "nightly-train",
        "image": "reg.example.com/ml/train:3",
    }
    job = nbdeploy.kubernetes(pipeline=notebook, **options).objects[0]
    assert job["metadata"]["name"] == "nightly-train"
    assert job["spec"]["activeDeadlineSeconds"] == 91
    assert job["spec"]["backoffLimit"] == 2
    container = container_of(job)
    assert container["image"] == "reg.example.com/ml/train:3"
    assert container["args"][1] == "/srv/app/Train Model.ipynb"
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["home"]["persistentVolumeClaim"] == {"claimName": "runs"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["home"] == {
        "name": "home",
        "mountPath": "/var/lib/nbdeploy/home",
        "subPathExpr": "$(POD_NAME)",  # a folder per pod on the shared claim
    }


def test_a_sweep_is_one_indexed_job(project: Path) -> None:
    notebook = project / "Train Model.ipynb"
    sweep = ["scale=[0.5, 2.0]", "n=1,2,3"]
    job = nbdeploy.kubernetes(pipeline=notebook, sweep=sweep, parallel=4, retries=1).objects[0]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 6
    assert spec["parallelism"] == 4
    assert spec["backoffLimitPerIndex"] == 1 and "backoffLimit" not in spec
    assert spec["podFailurePolicy"]["rules"][1]["action"] == "FailIndex"
    args = container_of(job)["args"]
    assert args[3:] == [
        "--sweep", "scale=[0.5, 2.0]", "--sweep", "n=1,2,3", "--sweep-index", "env",
    ]  # fmt: skip
    assert job["metadata"]["annotations"]["nbdeploy.io/combinations"] == "6"
    few = nbdeploy.kubernetes(pipeline=notebook, sweep=["n=1,2"], parallel=10).objects[0]
    assert few["spec"]["parallelism"] == 2


def test_a_schedule_makes_a_cronjob(project: Path) -> None:
    notebook = project / "Train Model.ipynb"
    cron = nbdeploy.kubernetes(pipeline=notebook, schedule="0  3 * *\tMON-FRI").objects[0]
    assert cron["kind"] == "CronJob"
    assert cron["spec"]["schedule"] == "0 3 * * MON-FRI"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["successfulJobsHistoryLimit"] == 3
    assert cron["spec"]["failedJobsHistoryLimit"] == 3
    assert "ttlSecondsAfterFinished" not in job_spec(cron)  # the history limits keep them
    assert container_of(cron)["args"][:2] == ["run", "/home/nbdeploy/work/Train Model.ipynb"]


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        ("* * * *", "has 5 fields"),
        ("0 3 * * * *", "has 5 fields"),
        ("TZ=UTC 0 3 * * *", "has 5 fields"),
        ("61 * * * *", "minute '61': out of range: 0 to 59"),
        ("0 24 * * *", "hour '24'"),
        ("0 0 32 * *", "day of month '32'"),
        ("0 0 * 13 *", "month '13'"),
        ("0 0 * * 8", "day of week '8'"),
        ("*/0 * * * *", "the step after '/'"),
        ("0 0 * foo *", "or a name (jan...dec)"),
        ("5-1 * * * *", "a range's start is after its end"),
        ("@often", "has 5 fields"),
        ("$(reboot) * * * *", "minute '$(reboot)'"),
    ],
)
def test_bad_schedules_are_refused_clearly(project: Path, schedule: str, problem: str) -> None:
    with pytest.raises(ManifestError, match="--schedule") as caught:
        nbdeploy.kubernetes(pipeline=project / "Train Model.ipynb", schedule=schedule)
    assert problem in str(caught.value)
    assert 'e.g. "0 3 * * *"' in str(caught.value)


def test_hostile_values_and_names_stay_single_arguments(project: Path, make_notebook: Any) -> None:
    notebook = project / "Train Model.ipynb"
    label = "; rm -rf / #"
    job = nbdeploy.kubernetes(
        pipeline=notebook, parameters={"note": HOSTILE, "label": label, "n": -3}
    ).objects[0]
    container = container_of(job)
    assert container["command"] == ["nbdeploy"]  # no shell anywhere
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    argv = [kubelet_expansion(arg, env) for arg in container["args"]]
    assert argv[3:] == ["-p", "note", HOSTILE, "-p", "label", label, "-p", "n", "-3"]
    assert schema_errors([job]) == []

    # What nbdeploy run's parser would take for an option, or no argv can hold: refused.
    for value in ("--json", "-x", "a\0b"):
        with pytest.raises(nbdeploy.errors.ParameterError, match="parameter 'note'"):
            nbdeploy.kubernetes(pipeline=notebook, parameters={"note": value})
    with pytest.raises(nbdeploy.errors.ParameterError, match="unknown parameter 'x; rm'"):
        nbdeploy.kubernetes(pipeline=notebook, parameters={"x; rm": "1"})
    with pytest.raises(nbdeploy.errors.ParameterError, match="is not of the form NAME=V1"):
        nbdeploy.kubernetes(pipeline=notebook, sweep=["$(x)=1,2"])
    for option, value, message in [
        ("workdir", "/srv/$(HOME)", "--workdir"),
        ("workdir", "/srv/../etc", "--workdir"),
        ("mlflow_uri", "http://mlflow:5000\nX: y", "--mlflow-uri"),
        ("output_claim", "Runs Claim", "--output-claim"),
        ("job_name", "Train_Model", "--job-name 'Train_Model'"),
        ("job_name", "a" * 53, "at most 52 characters"),
        ("image", "reg example/x", "is not an image reference"),
    ]:
        with pytest.raises(ManifestError, match=re.escape(message)):
            nbdeploy.kubernetes(pipeline=notebook, **{option: value})

    # Names come from the notebook's name as a DNS-1123 label, or are refused.
    odd = make_notebook("Ünïcode Model (v2)!.ipynb", TRAIN, folder=project)
    assert nbdeploy.kubernetes(pipeline=odd).objects[0]["metadata"]["name"] == "unicode-model-v2"
    long = make_notebook("x" * 80 + ".ipynb", TRAIN, folder=project)
    assert nbdeploy.kubernetes(pipeline=long).objects[0]["metadata"]["name"] == "x" * 52
    hopeless = make_notebook("___.ipynb", TRAIN, folder=project)
    with pytest.raises(ManifestError, match=r"cannot make a Kubernetes name out of '___\.ipynb'"):
        nbdeploy.kubernetes(pipeline=hopeless)
    named = nbdeploy.kubernetes(pipeline=hopeless, job_name="cleanup").objects[0]
    assert named["metadata"]["name"] == "cleanup"


def test_parameters_are_checked_before_any_yaml_is_written(
    project: Path, cli: Any, tmp_path: Path
) -> None:
    out = tmp_path / "manifests"
    notebook = str(project / "Train Model.ipynb")
    pipeline = str(project / "pipeline.yaml")
    cases = [
        (["--pipeline", notebook, "-p", "n", "lots"], "parameter 'n' of Train Model.ipynb "
         "expects int, got lots"),
        (["--pipeline", notebook, "-p", "scal", "2"], "did you mean 'scale'?"),
        (["--pipeline", notebook, "--sweep", "n=1,two"], "expects int, got two"),
        (["--pipeline", pipeline, "-p", "alpha", "1"], "no step of pipeline.yaml declares "
         "the parameter(s) alpha"),
        (["--pipeline", pipeline, "-p", "rows", "many"], "pipeline.yaml, step 'prepare': "
         "parameter 'rows'"),
        (["--pipeline", pipeline, "--sweep", "rows=1,2"], "--sweep applies to a notebook"),
        (["--pipeline", notebook, "--parallel", "2"], "--parallel applies to a sweep"),
        (["--pipeline", notebook, "--replicas", "3"], "--replicas: only for a deployment"),
        (["churn", "--schedule", "0 3 * * *"], "--schedule: only for --pipeline"),
        (["churn", "--pipeline", notebook], "give either a deployment NAME or --pipeline"),
        (["--pipeline", notebook, "--dry-run"], "--context and --dry-run go with --apply"),
        (["--pipeline", str(project / "missing.ipynb")], "notebook not found"),
    ]  # fmt: skip
    for arguments, message in cases:
        done = cli("k8s", *arguments, "--out", str(out))
        assert done.code == 2, (arguments, done)
        assert message in done.err, (arguments, done.err)
        assert "Traceback" not in done.err
        assert not out.exists(), arguments

    done = cli("k8s", "--pipeline", pipeline, "-p", "rows", "9", "--parallel", "2", "--out",
               str(out), "--json")  # fmt: skip
    assert done.code == 0, done.err
    assert done.json["objects"] == [{"kind": "Job", "name": "churn-project"}]
    assert "nbdeploy/pipeline-churn-project:latest" in done.err
    import yaml

    job = yaml.safe_load(Path(done.json["files"][0]).read_text())
    assert container_of(job)["args"] == [
        "run", "/home/nbdeploy/work/pipeline.yaml", "--log-output",
        "-p", "rows", "9", "--parallel", "2",
    ]  # fmt: skip


def test_sweep_index_numbers_the_combinations_as_nbdeploy_run_sweep_runs_them(
    make_notebook: Any, monkeypatch: pytest.MonkeyPatch, python_kernel: str
) -> None:
    """Pod i of the Indexed Job runs combination i of the order run_sweep prepares them in
    (its text axes before its JSON ones, whatever order the options came in)."""
    from nbdeploy.k8s.batch import sweep_combinations
    from nbdeploy.pipeline import sweep as sweep_module

    notebook = make_notebook("grid.ipynb", TRAIN)
    options = ["scale=[0.5, 2.0]", "n=1,2,3", "label=x,y"]
    prepared: list[dict[str, Any]] = []
    prepare_run = sweep_module.prepare_run

    class Enough(Exception):
        pass

    def recording(nb: Any, values: Any = None, text_values: Any = None, **kwargs: Any) -> Any:
        prepared.append({**(values or {}), **(text_values or {})})
        if len(prepared) == 12:
            raise Enough  # every combination prepared: no need to run any
        return prepare_run(nb, values, text_values, **kwargs)

    monkeypatch.setattr(sweep_module, "prepare_run", recording)
    with pytest.raises(Enough):
        sweep_module.run_sweep(notebook, options)
    combinations = sweep_combinations(options)
    assert [{**c.typed, **c.text} for c in combinations] == prepared
    assert [c.index for c in combinations] == list(range(12))
    assert combinations[1].label() == "n=1, label=x, scale=2.0"  # the last axis varies fastest


def test_sweep_index_errors(make_notebook: Any, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = str(make_notebook("grid.ipynb", TRAIN))
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    for arguments, message in [
        (["--sweep-index", "0"], "give the sweep too"),
        (["--sweep", "n=1,2", "--sweep-index", "2"], "has 2 combinations, numbered 0 to 1"),
        (["--sweep", "n=1,2", "--sweep-index", "first"], "--sweep-index 'first': a combination's"),
        (["--sweep", "n=1,2", "--sweep-index", "env"], "JOB_COMPLETION_INDEX is not set"),
    ]:  # fmt: skip
        done = cli("run", notebook, *arguments)
        assert done.code == 2, (arguments, done)
        assert message in done.err, (arguments, done.err)


@pytest.mark.integration
def test_the_pods_command_runs_the_combination_of_its_index(
    project: Path, cli: Any, home: Path, tmp_path: Path, python_kernel: str
) -> None:
    """The Indexed Job's container command, run here as the kubelet would run it in pod 1:
    it runs combination 1 of the sweep, with every value as given."""
    import yaml

    label = "; rm -rf / #"
    done = cli(
        "k8s", "--pipeline", str(project / "Train Model.ipynb"),
        "-p", "note", HOSTILE, "-p", "label", label,
        "--sweep", "scale=[0.5, 2.0]", "--sweep", "n=1,2",
        "--out", str(tmp_path / "k8s"), "--json",
    )  # fmt: skip
    assert done.code == 0, done.err
    job = yaml.safe_load(Path(done.json["files"][0]).read_text())
    assert schema_errors([job]) == []
    assert job["spec"]["completions"] == 4
    container = container_of(job)
    # The kubelet: the container's env, and JOB_COMPLETION_INDEX in each pod of the Job.
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["JOB_COMPLETION_INDEX"] = "1"
    argv = [kubelet_expansion(arg, env) for arg in container["command"] + container["args"]]
    assert argv[4:10] == ["-p", "note", HOSTILE, "-p", "label", label]
    # Here: the image's nbdeploy is this one, its project folder the test's.
    workdir = container["workingDir"]
    assert argv[2] == f"{workdir}/Train Model.ipynb"
    argv[0] = str(VENV_BIN / "nbdeploy")
    argv[2] = str(project / "Train Model.ipynb")
    env["NBDEPLOY_HOME"] = str(home)
    completed = subprocess.run(
        argv,
        cwd=project,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "combination 1 (of 4, from 0): n=1, scale=2.0" in completed.stderr
    records = cli("runs", "--json").json
    assert len(records) == 1  # one combination, not the sweep
    record = records[0]
    assert record["status"] == "succeeded"
    assert record["parameters"] == {"note": HOSTILE, "label": label, "n": 1, "scale": 2.0}
    assert record["metrics"] == {"product": 2.0}
    assert record["logged_params"] == {"note_seen": HOSTILE, "label_seen": label}


# -- serving pods log their requests --------------------------------------------------
def test_serving_pods_log_their_requests(tmp_path: Path) -> None:
    from nbdeploy.deployment.runtime.serving import REQUEST_LOG_DIR_ENV, VERSION_ENV

    add_versions(tmp_path, count=3, live=2)
    pod = manifests("churn").objects[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[REQUEST_LOG_DIR_ENV] == "/var/lib/nbdeploy/requests"
    assert env[VERSION_ENV] == "2"  # the live version's number
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["requests"] == {"name": "requests", "mountPath": "/var/lib/nbdeploy/requests"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["requests"] == {"name": "requests", "emptyDir": {"sizeLimit": "2Gi"}}

    canary = K8sOptions(strategy="canary", candidate=3, request_log_claim="logs")
    objects = manifests("churn", canary).objects
    assert schema_errors(objects) == []
    rollout = by_kind(objects, "Rollout")[0]["spec"]["template"]["spec"]
    assert {v["name"]: v for v in rollout["volumes"]}["requests"]["persistentVolumeClaim"] == {
        "claimName": "logs"
    }
    mount = {m["name"]: m for m in rollout["containers"][0]["volumeMounts"]}["requests"]
    assert mount["subPathExpr"] == "$(POD_NAME)"
    env = {e["name"]: e for e in rollout["containers"][0]["env"]}
    assert env["NBDEPLOY_VERSION"]["value"] == "3"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    with pytest.raises(ManifestError, match="--request-log-claim 'Logs!'"):
        manifests("churn", K8sOptions(request_log_claim="Logs!"))


# -- --apply: the kubeconfig's cluster ----------------------------------------------------
def require_kubernetes_client() -> None:
    require_component(
        "the kubernetes Python client",
        importlib.util.find_spec("kubernetes") is not None,
        "pip install 'nbdeploy[k8s]'",
    )


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No kubeconfig and no cluster around: KUBECONFIG names a file yet to be written and
    HOME is an empty folder. Returns the KUBECONFIG path."""
    require_kubernetes_client()
    empty_home = tmp_path / "user-home"
    empty_home.mkdir()
    monkeypatch.setenv("HOME", str(empty_home))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = tmp_path / "kube" / "config"
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


TOKEN = "nbdeploy-test-token"


def write_kubeconfig(path: Path, server: str, namespace: str | None = None) -> None:
    import yaml

    context: dict[str, Any] = {"cluster": "test", "user": "tester"}
    if namespace:
        context["namespace"] = namespace
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": TOKEN}}],
                "contexts": [{"name": "test", "context": context}],
                "current-context": "test",
            }
        )
    )


class FakeApiServer(http.server.ThreadingHTTPServer):
    """A Kubernetes API server as far as server-side apply needs one: discovery documents
    for the APIs nbdeploy writes, and PATCH answered with the object sent (in the namespace
    of its path). Records every request; ``refuse`` maps a kind to (status, message);
    ``refuse_all`` answers every request with that status; ``groups`` drops API groups."""

    daemon_threads = True
    APIS: ClassVar[dict[str, list[str]]] = {
        "v1": ["Service"],
        "apps/v1": ["Deployment"],
        "batch/v1": ["Job", "CronJob"],
        "autoscaling/v2": ["HorizontalPodAutoscaler"],
        "policy/v1": ["PodDisruptionBudget"],
        "argoproj.io/v1alpha1": ["Rollout", "AnalysisTemplate"],
        "networking.istio.io/v1beta1": ["VirtualService"],
        "gateway.networking.k8s.io/v1": ["HTTPRoute"],
    }

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ApiHandler)
        self.requests: list[dict[str, Any]] = []
        self.refuse: dict[str, tuple[int, str]] = {}
        self.refuse_all: int | None = None
        self.apis = dict(self.APIS)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def patches(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "PATCH"]

    def discovery(self, path: str) -> tuple[int, Any]:
        groups = [api for api in self.apis if "/" in api]
        if path == "/version":
            return 200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            listed = []
            for api in groups:
                name, version = api.split("/")
                entry = {"groupVersion": api, "version": version}
                listed.append({"name": name, "versions": [entry], "preferredVersion": entry})
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": listed}
        api = path.removeprefix("/api/").removeprefix("/apis/")
        if api in self.apis:
            resources = [
                {
                    "name": kind.lower() + "s",
                    "singularName": kind.lower(),
                    "namespaced": True,
                    "kind": kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                }
                for kind in self.apis[api]
            ]
            return 200, {"kind": "APIResourceList", "groupVersion": api, "resources": resources}
        return 404, status_body(404, f"the server could not find the requested resource {path}")


def status_body(code: int, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "code": code}  # fmt: skip


class _ApiHandler(http.server.BaseHTTPRequestHandler):
    server: FakeApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self, body: Any) -> dict[str, Any]:
        url = urllib.parse.urlsplit(self.path)
        request = {
            "method": self.command,
            "path": url.path,
            "query": dict(urllib.parse.parse_qsl(url.query)),
            "headers": {key.lower(): value for key, value in self.headers.items()},
            "body": body,
        }
        self.server.requests.append(request)
        return request

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        request = self._record(None)
        if self.server.refuse_all:
            self._answer(self.server.refuse_all, status_body(self.server.refuse_all, "denied"))
            return
        self._answer(*self.server.discovery(request["path"]))

    def do_PATCH(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        request = self._record(body)
        refused = self.server.refuse.get(body.get("kind")) if isinstance(body, dict) else None
        if self.server.refuse_all:
            refused = (self.server.refuse_all, "denied")
        if refused:
            self._answer(refused[0], status_body(*refused))
            return
        answer = json.loads(json.dumps(body))
        parts = request["path"].split("/")
        answer["metadata"]["namespace"] = parts[parts.index("namespaces") + 1]
        self._answer(200, answer)


@pytest.fixture
def api_server(kube: Path) -> Iterator[FakeApiServer]:
    """A recording API server on 127.0.0.1, the cluster of the kubeconfig."""
    server = FakeApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    write_kubeconfig(kube, server.url, namespace="team")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_apply_without_a_kubeconfig_says_so_and_writes_nothing(
    project: Path, kube: Path, cli: Any, tmp_path: Path
) -> None:
    add_versions(tmp_path)
    for target in (["--pipeline", str(project / "Train Model.ipynb")], ["churn"]):
        done = cli("k8s", *target, "--apply")
        assert done.code == 2, done
        assert (
            f"no Kubernetes cluster configured: no kubeconfig at {kube} and not running in a "
            "cluster" in done.err
        )
        assert (
            "set KUBECONFIG and run this again, or use --out DIR to write the manifests" in done.err
        )
        assert "Traceback" not in done.err
        assert done.out == ""  # nothing half-done: no YAML on stdout either


def test_apply_without_a_kubeconfig_still_writes_the_out_folder(
    project: Path, kube: Path, cli: Any, tmp_path: Path
) -> None:
    """--out was asked for: the files are written, and the error says where they are and
    how to apply them (a server-side check only, for --dry-run), not to use --out."""
    import yaml

    add_versions(tmp_path, count=2, live=1)
    cases = [
        (["--pipeline", str(project / "Train Model.ipynb")], ["Job"]),
        (["churn", "--strategy", "blue-green"], ["Deployment", "PodDisruptionBudget",
                                                 "Service", "Service", "VirtualService"]),
    ]  # fmt: skip
    for number, (target, kinds) in enumerate(cases):
        for dry_run in (["--dry-run"], []):
            out = tmp_path / f"manifests-{number}{'-dry' if dry_run else ''}"
            done = cli("k8s", *target, "--apply", *dry_run, "--out", str(out))
            assert done.code == 2, done
            assert f"no kubeconfig at {kube}" in done.err
            assert "--out DIR" not in done.err
            check = " --dry-run=server" if dry_run else ""
            assert (
                f"set KUBECONFIG and run this again, or the manifests are written in {out}: "
                f"kubectl apply --server-side{check} -f {out} applies them" in done.err
            ), done.err
            assert "Traceback" not in done.err
            written = sorted(out.glob("*.yaml"))
            assert [yaml.safe_load(path.read_text())["kind"] for path in written] == kinds
    route = yaml.safe_load((tmp_path / "manifests-1" / "05-virtualservice-churn.yaml").read_text())
    assert [(r["destination"]["host"], r["weight"]) for r in route["spec"]["http"][0]["route"]] == [
        ("churn-v1", 100)
    ]


def test_apply_to_an_unreachable_server_names_its_address(
    project: Path, kube: Path, cli: Any, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write_kubeconfig(kube, f"https://127.0.0.1:{port}")
    started = time.monotonic()
    done = cli("k8s", "--pipeline", str(project / "Train Model.ipynb"), "--apply")
    assert done.code == 1, done
    assert (
        f"cannot reach the Kubernetes API server at https://127.0.0.1:{port} (context test): "
        "connection refused" in done.err
    )
    assert "kubectl cluster-info" in done.err and "Traceback" not in done.err
    assert time.monotonic() - started < 60
    out = tmp_path / "manifests"
    done = cli(
        "k8s", "--pipeline", str(project / "Train Model.ipynb"), "--apply", "--out", str(out)
    )
    assert done.code == 1, done
    assert f"the manifests are written in {out}: kubectl apply --server-side -f {out}" in done.err
    assert "--out DIR" not in done.err
    assert [path.name for path in out.glob("*.yaml")] == ["01-job-train-model.yaml"]


def test_apply_sends_server_side_apply_of_the_manifests_written(
    project: Path, api_server: FakeApiServer, cli: Any, tmp_path: Path
) -> None:
    import yaml

    add_versions(tmp_path, count=2, live=1)
    cases = [
        (["--pipeline", str(project / "Train Model.ipynb"), "--sweep", "n=1,2", "-p", "note",
          HOSTILE, "--namespace", "ml"], "ml"),
        (["churn", "--strategy", "canary", "--mesh", "gateway-api", "--max-replicas", "4"],
         "team"),  # no --namespace: the kubeconfig context's
    ]  # fmt: skip
    for number, (arguments, namespace) in enumerate(cases):
        api_server.requests.clear()
        out = tmp_path / f"out-{number}"
        done = cli("k8s", *arguments, "--apply", "--out", str(out), "--json")
        assert done.code == 0, done.err
        written = [yaml.safe_load(Path(path).read_text()) for path in done.json["files"]]
        patches = api_server.patches()
        # A server-side dry run of every object first, then each for real, in order.
        assert [p["query"].get("dryRun") for p in patches] == ["All"] * len(written) + [None] * len(
            written
        )
        for patch in patches:
            assert patch["headers"]["content-type"] == "application/apply-patch+yaml"
            assert patch["headers"]["authorization"] == f"Bearer {TOKEN}"
            assert patch["query"]["fieldManager"] == "nbdeploy"
            assert patch["query"]["force"].lower() == "true"
        applied = patches[len(written) :]
        assert [p["body"] for p in applied] == written  # exactly what nbdeploy k8s writes
        for patch, obj in zip(applied, written, strict=True):
            group_version = obj["apiVersion"]
            prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
            plural = obj["kind"].lower() + "s"
            name = obj["metadata"]["name"]
            assert patch["path"] == f"{prefix}/namespaces/{namespace}/{plural}/{name}"
        assert done.json["applied"] == [
            {"kind": obj["kind"], "name": obj["metadata"]["name"], "namespace": namespace}
            for obj in written
        ]
        assert done.json["dry_run"] is False
    assert any(p["path"].startswith("/apis/argoproj.io/v1alpha1/") for p in patches)
    assert any(p["path"].startswith("/apis/gateway.networking.k8s.io/v1/") for p in patches)

    api_server.requests.clear()
    dry = cli("k8s", "churn", "--apply", "--dry-run", "--context", "test")
    assert dry.code == 0, dry.err
    assert {p["query"].get("dryRun") for p in api_server.patches()} == {"All"}
    assert "accepted (dry run: nothing changed): Deployment/churn in namespace team" in dry.out


def test_apply_errors_name_the_object_and_the_apis_message(
    project: Path, api_server: FakeApiServer, cli: Any, tmp_path: Path
) -> None:
    add_versions(tmp_path, count=2, live=1)
    invalid = 'Service "churn" is invalid: spec.ports[0].port: Invalid value: 0'
    api_server.refuse["Service"] = (422, invalid)
    done = cli("k8s", "churn", "--apply")
    assert done.code == 1, done
    assert (
        f"the API server at {api_server.url} refused Service/churn in namespace team (422): "
        f"{invalid}; nothing was changed" in done.err
    )
    assert all(p["query"].get("dryRun") == "All" for p in api_server.patches())
    assert "Traceback" not in done.err

    api_server.refuse = {"Deployment": (403, 'deployments.apps "churn" is forbidden')}
    done = cli("k8s", "churn", "--apply")
    assert done.code == 1, done
    assert "refused the credentials of context test for Deployment/churn" in done.err
    assert "(403 Forbidden)" in done.err and "kubectl auth can-i" in done.err

    api_server.refuse = {}
    api_server.refuse_all = 401
    done = cli("k8s", "churn", "--apply")
    assert done.code == 1, done
    assert "refused the credentials of context test" in done.err and "401" in done.err

    api_server.refuse_all = None
    del api_server.apis["argoproj.io/v1alpha1"]
    done = cli("k8s", "churn", "--strategy", "canary", "--apply")
    assert done.code == 1, done
    assert "has no AnalysisTemplate API (argoproj.io/v1alpha1)" in done.err
    assert "install Argo Rollouts" in done.err

    done = cli("k8s", "churn", "--apply", "--context", "production")
    assert done.code == 2, done
    assert "production" in done.err and "kubectl config get-contexts" in done.err


def test_apply_from_python(project: Path, api_server: FakeApiServer, tmp_path: Path) -> None:
    result = nbdeploy.kubernetes(
        pipeline=project / "Train Model.ipynb",
        schedule="@daily",
        out=tmp_path / "k8s",
        apply=True,
    )
    assert [obj["kind"] for obj in result.applied] == ["CronJob"]
    assert result.applied[0]["metadata"]["namespace"] == "team"
    assert api_server.patches()[-1]["path"] == "/apis/batch/v1/namespaces/team/cronjobs/train-model"


def test_apply_without_the_kubernetes_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from nbdeploy.k8s.apply import connect

    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as if not installed
    with pytest.raises(nbdeploy.errors.NbdeployError, match="kubernetes Python client") as caught:
        connect()
    assert "pip install 'nbdeploy[k8s]'" in str(caught.value)
