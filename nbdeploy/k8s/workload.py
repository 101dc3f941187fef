"""The Kubernetes objects that run one version: its pod template, a Deployment (or the pod
template an Argo Rollout wraps), a Service, and optionally an autoscaler and a disruption
budget.

A version runs from its container image (``nbdeploy image build``) exactly as it does
here: BentoML's HTTP server on port 3000, answering /readyz when its model is loaded and
/livez while it lives, Prometheus metrics on /metrics. Pods run as a non-root user with a
read-only root file system (scratch space on /tmp), no privilege escalation, no
capabilities and no service-account token: a model server needs none of them. Each pod
logs its requests (what ``nbdeploy metrics`` reads) to /var/lib/nbdeploy/requests: an
emptyDir, or a folder per pod on a PersistentVolumeClaim (``--request-log-claim``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdeploy.deployment.runtime.serving import REQUEST_LOG_DIR_ENV, VERSION_ENV
from nbdeploy.image.reference import (
    DEFAULT_REPOSITORY,
    IMAGE_USER,
    SERVING_PORT,
    is_image_reference,
)

CONTAINER_PORT = SERVING_PORT
SERVICE_PORT = 80
RUN_AS_USER = IMAGE_USER
NAME_LABEL = "app.kubernetes.io/name"
VERSION_LABEL = "app.kubernetes.io/version"
MANAGED_BY = {"app.kubernetes.io/managed-by": "nbdeploy"}
REQUEST_LOG_DIR = "/var/lib/nbdeploy/requests"
# The request log keeps at most 16 segments of 64 MiB (service/requestlog_runtime.py):
# an emptyDir that outgrows its limit gets its pod evicted, so leave room.
REQUEST_LOG_SIZE = "2Gi"
POD_NAME_ENV = "POD_NAME"


@dataclass(frozen=True)
class VersionSpec:
    """What the manifests need to know of one version."""

    deployment: str
    number: int
    image: str
    bento_tag: str
    content_hash: str
    workers: int = 1
    artifacts_bytes: int = 0

    @property
    def key(self) -> str:
        return f"v{self.number}"

    @property
    def object_name(self) -> str:
        return f"{self.deployment}-{self.key}"


@dataclass(frozen=True)
class Resources:
    cpu: str | None = None  # requested per pod; default from the workers
    memory: str | None = None  # requested and the limit; default from the model's size
    request_log_claim: str | None = None  # a PersistentVolumeClaim for the request log


def image_for(repository: str | None, name: str, number: int, *, versions_needed: int) -> str:
    """The image of version ``number``: REPOSITORY:vN, or the reference as given when it
    names a tag or digest (then it can stand for one version only)."""
    reference = check_image(repository or DEFAULT_REPOSITORY.format(name=name))
    last = reference.rsplit("/", 1)[-1]
    if ":" in last or "@" in last:
        if versions_needed > 1:
            raise ValueError(
                f"--image {reference!r} names one image, but these manifests run "
                f"{versions_needed} versions: give the repository alone and each version "
                "is tagged vN"
            )
        return reference
    return f"{reference}:v{number}"


def check_image(reference: str) -> str:
    """``reference`` when Docker can read it as an image reference; ValueError otherwise."""
    if not is_image_reference(reference):
        raise ValueError(
            f"--image {reference!r} is not an image reference such as "
            "registry.example.com/team/churn or churn:v3"
        )
    return reference


def artifacts_size(directory: str | Path) -> int:
    """Bytes in a version's folder: its models and code, which a pod holds in memory."""
    total = 0
    for path in Path(directory).rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def labels(version: VersionSpec) -> dict[str, str]:
    return {NAME_LABEL: version.deployment, VERSION_LABEL: version.key, **MANAGED_BY}


def metadata(name: str, namespace: str | None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta.update(extra)
    return meta


def _memory(version: VersionSpec, resources: Resources) -> str:
    if resources.memory:
        return resources.memory
    # BentoML's server and the interpreter take about 300 MiB per worker; the model is
    # loaded once per worker, and unpickling briefly needs about twice its size.
    mebibytes = version.workers * (300 + 2 * version.artifacts_bytes // 2**20)
    return f"{max(512, -(-mebibytes // 64) * 64)}Mi"


def pod_template(version: VersionSpec, resources: Resources) -> dict[str, Any]:
    memory = _memory(version, resources)
    cpu = resources.cpu or f"{250 * version.workers}m"
    requests_volume, requests_mount, requests_env = writable_volume(
        "requests", REQUEST_LOG_DIR, claim=resources.request_log_claim, size=REQUEST_LOG_SIZE
    )
    container = {
        "name": "model",
        "image": version.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "env": [
            *requests_env,
            {"name": REQUEST_LOG_DIR_ENV, "value": REQUEST_LOG_DIR},
            {"name": VERSION_ENV, "value": str(version.number)},
        ],
        "resources": {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": f"{version.workers}", "memory": memory},
        },
        # Loading a large model can take a while: the startup probe allows two minutes
        # before liveness counts.
        "startupProbe": _probe("/livez", period=2, failures=60),
        "readinessProbe": _probe("/readyz", period=5, failures=2),
        "livenessProbe": _probe("/livez", period=10, failures=3),
        "securityContext": container_security(read_only_root=True),
        "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}, requests_mount],
    }
    return {
        "metadata": {
            "labels": labels(version),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(CONTAINER_PORT),
                "prometheus.io/path": "/metrics",
                "nbdeploy.io/bento": version.bento_tag,
                "nbdeploy.io/content-hash": version.content_hash,
            },
        },
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": pod_security(),
            "terminationGracePeriodSeconds": 30,
            "containers": [container],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}, requests_volume],
        },
    }


def pod_security() -> dict[str, Any]:
    """The pod's security context: the images' non-root user, the runtime's seccomp
    profile; volumes are group-writable for that user."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security(*, read_only_root: bool) -> dict[str, Any]:
    """A container's security context: no privilege escalation, no capabilities."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
    }


def writable_volume(
    name: str, path: str, *, claim: str | None, size: str | None
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """A writable folder at ``path``: an emptyDir (of at most ``size``), or on the
    PersistentVolumeClaim ``claim`` a folder per pod (named after the pod, so that pods
    sharing the claim never write into each other's files). Returns the volume, its
    mount and the environment the mount needs."""
    mount: dict[str, Any] = {"name": name, "mountPath": path}
    if claim is None:
        return {"name": name, "emptyDir": {"sizeLimit": size} if size else {}}, mount, []
    pod_name = {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    return (
        {"name": name, "persistentVolumeClaim": {"claimName": claim}},
        {**mount, "subPathExpr": f"$({POD_NAME_ENV})"},
        [pod_name],
    )


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def deployment(
    version: VersionSpec, *, namespace: str | None, replicas: int, resources: Resources
) -> dict[str, Any]:
    """A Deployment of one version; an update rolls out without ever going below the
    replicas asked for (maxUnavailable 0)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(version.object_name, namespace, labels=labels(version)),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {
                "matchLabels": {NAME_LABEL: version.deployment, VERSION_LABEL: version.key}
            },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": pod_template(version, resources),
        },
    }


def service(
    name: str, deployment_name: str, *, namespace: str | None, version_key: str | None = None
) -> dict[str, Any]:
    """A Service on port 80 for the pods of one version, or of every version."""
    selector = {NAME_LABEL: deployment_name}
    if version_key:
        selector[VERSION_LABEL] = version_key
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, namespace, labels={NAME_LABEL: deployment_name, **MANAGED_BY}),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {
                    "name": "http",
                    "port": SERVICE_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def autoscaler(
    target: dict[str, Any], *, namespace: str | None, minimum: int, maximum: int
) -> dict[str, Any]:
    """Scale ``target`` (a Deployment or a Rollout) on CPU between the two bounds."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(target["metadata"]["name"], namespace, labels=dict(MANAGED_BY)),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": target["apiVersion"],
                "kind": target["kind"],
                "name": target["metadata"]["name"],
            },
            "minReplicas": minimum,
            "maxReplicas": maximum,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
    }


def disruption_budget(
    name: str, selector: dict[str, str], *, namespace: str | None
) -> dict[str, Any]:
    """At most one pod down at a time during node drains and upgrades."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(name, namespace, labels=dict(MANAGED_BY)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
