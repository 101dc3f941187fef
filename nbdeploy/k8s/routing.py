"""Traffic between versions on Kubernetes: what nbdeploy's router does on one machine,
written for the service meshes and controllers clusters already run.

- Weighted routes (blue-green, A/B) and mirroring (shadow) as an Istio VirtualService or a
  Gateway API HTTPRoute. The HTTPRoute attaches to the deployment's Service (the Gateway
  API's mesh binding, GAMMA), so it works under Istio, Linkerd and other meshes; each
  version has a Service of its own as the route's backend.
- A metric-driven canary as an Argo Rollouts Rollout with an AnalysisTemplate over the
  versions' own Prometheus metrics (BentoML's request counter and latency histogram), with
  the same analysis nbdeploy runs locally: success rate at least 99% and p99 latency at most
  max(500 ms, 1.5 x the stable version's p99). Argo Rollouts moves the weights in the
  Istio VirtualService, or in the HTTPRoute through its Gateway API plugin.
"""

from __future__ import annotations

from typing import Any

from nbdeploy.k8s.workload import MANAGED_BY, SERVICE_PORT, metadata

ARM_HEADER = "X-Nbdeploy-Version"  # as the local router names the version that answered
ROUTE_NAME = "primary"
GATEWAY_PLUGIN = "argoproj-labs/gatewayAPI"
# Flagger's defaults, as the local canary analysis has them.
MIN_SUCCESS_RATE = 0.99
P99_FLOOR_SECONDS = 0.5
P99_FACTOR = 1.5


def istio_route(
    name: str,
    namespace: str | None,
    backends: list[tuple[str, int]],
    *,
    mirror: tuple[str, float] | None = None,
    arm_header: bool = False,
) -> dict[str, Any]:
    """A VirtualService for the host ``name``: ``backends`` are (service, weight in
    percent, summing to 100); ``mirror`` is (service, percent of requests copied)."""
    route: dict[str, Any] = {
        "name": ROUTE_NAME,
        "route": [_istio_destination(host, weight, arm_header) for host, weight in backends],
    }
    if mirror:
        host, percent = mirror
        route["mirror"] = {"host": host, "port": {"number": SERVICE_PORT}}
        route["mirrorPercentage"] = {"value": float(percent)}
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": metadata(name, namespace, labels=dict(MANAGED_BY)),
        "spec": {"hosts": [name], "http": [route]},
    }


def _istio_destination(host: str, weight: int, arm_header: bool) -> dict[str, Any]:
    destination: dict[str, Any] = {
        "destination": {"host": host, "port": {"number": SERVICE_PORT}},
        "weight": weight,
    }
    if arm_header:
        destination["headers"] = {"response": {"set": {ARM_HEADER: _arm(host)}}}
    return destination


def http_route(
    name: str,
    namespace: str | None,
    backends: list[tuple[str, int]],
    *,
    mirror: str | None = None,
    arm_header: bool = False,
) -> dict[str, Any]:
    """An HTTPRoute bound to the Service ``name``; ``mirror`` receives a copy of every
    request (the Gateway API's standard channel mirrors all of them)."""
    rule: dict[str, Any] = {
        "backendRefs": [_gateway_backend(host, weight, arm_header) for host, weight in backends]
    }
    if mirror:
        rule["filters"] = [
            {
                "type": "RequestMirror",
                "requestMirror": {"backendRef": {"name": mirror, "port": SERVICE_PORT}},
            }
        ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(name, namespace, labels=dict(MANAGED_BY)),
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": name, "port": SERVICE_PORT}],
            "rules": [rule],
        },
    }


def _gateway_backend(host: str, weight: int, arm_header: bool) -> dict[str, Any]:
    backend: dict[str, Any] = {"name": host, "port": SERVICE_PORT, "weight": weight}
    if arm_header:
        backend["filters"] = [
            {
                "type": "ResponseHeaderModifier",
                "responseHeaderModifier": {"set": [{"name": ARM_HEADER, "value": _arm(host)}]},
            }
        ]
    return backend


def _arm(service_name: str) -> str:
    return service_name.rsplit("-", 1)[-1]  # churn-v3 -> v3


def argo_canary(
    name: str,
    namespace: str | None,
    *,
    replicas: int,
    template: dict[str, Any],
    selector: dict[str, str],
    steps: list[float],
    interval_seconds: float,
    mesh: str,
    prometheus: str,
) -> list[dict[str, Any]]:
    """A Rollout that takes ``steps`` percent of the traffic in turn, each held for
    ``interval_seconds`` while its analysis runs; a failed analysis aborts the rollout
    (all traffic back to the stable version). Also its AnalysisTemplate."""
    analysis_name = f"{name}-canary"
    pause = f"{max(1, round(interval_seconds))}s"
    canary_steps: list[dict[str, Any]] = []
    for share in steps:
        if share >= 100:
            break  # the last step: Argo promotes once the steps before it passed
        canary_steps += [{"setWeight": round(share)}, {"pause": {"duration": pause}}]
    routing: dict[str, Any]
    if mesh == "istio":
        routing = {"istio": {"virtualService": {"name": name, "routes": [ROUTE_NAME]}}}
    else:
        plugin: dict[str, Any] = {"httpRoute": name}
        if namespace:
            plugin["namespace"] = namespace
        routing = {"plugins": {GATEWAY_PLUGIN: plugin}}
    rollout = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": metadata(name, namespace, labels=dict(MANAGED_BY)),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "template": template,
            "strategy": {
                "canary": {
                    "stableService": f"{name}-stable",
                    "canaryService": f"{name}-canary",
                    "maxUnavailable": 0,
                    "trafficRouting": routing,
                    "analysis": {
                        "templates": [{"templateName": analysis_name}],
                        "startingStep": 1,
                        "args": [
                            {
                                "name": "canary-hash",
                                "valueFrom": {"podTemplateHashValue": "Latest"},
                            },
                            {
                                "name": "stable-hash",
                                "valueFrom": {"podTemplateHashValue": "Stable"},
                            },
                            {
                                "name": "namespace",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                            },
                        ],
                    },
                    "steps": canary_steps,
                }
            },
        },
    }
    return [rollout, analysis_template(analysis_name, namespace, pause, prometheus)]


def analysis_template(
    name: str, namespace: str | None, interval: str, prometheus: str
) -> dict[str, Any]:
    """The canary's analysis over Prometheus. Series are told apart by the pods' labels
    (Prometheus's usual ``kubernetes-pods`` scrape job copies them: ``namespace`` and
    ``rollouts_pod_template_hash``). No traffic gives NaN: neither success nor failure,
    so the rollout pauses for a person instead of promoting blind."""
    window = f"[{interval}]"

    def series(metric: str, version: str, extra: str = "") -> str:
        return (
            f'{metric}{{namespace="{{{{args.namespace}}}}",'
            f'rollouts_pod_template_hash="{{{{args.{version}-hash}}}}"{extra}}}'
        )

    requests = "bentoml_service_request_total"
    buckets = "bentoml_service_request_duration_seconds_bucket"
    answered = series(requests, "canary", ',http_response_code!~"5.."')
    success = (
        f"scalar(sum(rate({answered}{window})) / sum(rate({series(requests, 'canary')}{window})))"
    )

    def p99(version: str) -> str:
        return f"histogram_quantile(0.99, sum by (le) (rate({series(buckets, version)}{window})))"

    latency = (
        f"scalar({p99('canary')} - clamp_min({P99_FACTOR} * {p99('stable')}, {P99_FLOOR_SECONDS}))"
    )
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": metadata(name, namespace, labels=dict(MANAGED_BY)),
        "spec": {
            "args": [{"name": "canary-hash"}, {"name": "stable-hash"}, {"name": "namespace"}],
            "metrics": [
                {
                    "name": "success-rate",
                    "interval": interval,
                    "failureLimit": 0,
                    "successCondition": f"result >= {MIN_SUCCESS_RATE}",
                    "failureCondition": f"result < {MIN_SUCCESS_RATE}",
                    "provider": {"prometheus": {"address": prometheus, "query": success}},
                },
                {
                    "name": "p99-latency",
                    "interval": interval,
                    "failureLimit": 0,
                    # canary p99 minus its limit, in seconds: at most 0 passes
                    "successCondition": "result <= 0",
                    "failureCondition": "result > 0",
                    "provider": {"prometheus": {"address": prometheus, "query": latency}},
                },
            ],
        },
    }
