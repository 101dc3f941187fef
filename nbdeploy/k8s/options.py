"""The options of ``nbdeploy k8s`` (and of :func:`nbdeploy.kubernetes`), checked before
anything is written. Kept light: the command line's help imports it."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from nbdeploy.deployment.options import percentages
from nbdeploy.errors import NbdeployError

STRATEGIES = ("rolling", "blue-green", "canary", "ab", "shadow")
MESHES = ("istio", "gateway-api")
DEFAULT_PROMETHEUS = "http://prometheus-server.monitoring.svc.cluster.local"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")


class ManifestError(NbdeployError):
    """The manifests asked for cannot be written as given."""


@dataclass
class K8sOptions:
    strategy: str = "rolling"
    mesh: str = "istio"
    namespace: str | None = None
    replicas: int = 2
    max_replicas: int | None = None  # an autoscaler from replicas up to this
    image: str | None = None  # a repository (tagged vN per version) or one image
    candidate: int | None = None  # the new version (default: the newest)
    weight: float | None = None  # A/B: the new arm's share; shadow: percent mirrored
    steps: list[float] | None = None
    interval: float | None = None
    cpu: str | None = None
    memory: str | None = None
    prometheus: str = DEFAULT_PROMETHEUS


def add_k8s_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="rolling",
        help="rolling (default): one Deployment, updated in place; blue-green, ab, shadow: "
        "a Deployment per version and a route between them; canary: an Argo Rollouts "
        "Rollout with metric analysis",
    )
    parser.add_argument(
        "--mesh",
        choices=MESHES,
        default="istio",
        help="routes as an Istio VirtualService (default) or a Gateway API HTTPRoute",
    )
    parser.add_argument("--namespace", metavar="NS")
    parser.add_argument("--replicas", type=int, default=2, metavar="N", help="default 2")
    parser.add_argument(
        "--max-replicas", type=int, metavar="N", help="add an autoscaler (CPU 70%%) up to N"
    )
    parser.add_argument(
        "--image",
        metavar="IMAGE",
        help="the image repository, each version tagged vN (default nbdeploy/NAME, as "
        "nbdeploy image build tags them); or one image:tag",
    )
    parser.add_argument(
        "--candidate", type=int, metavar="N", help="the new version (default: the newest)"
    )
    parser.add_argument(
        "--weight",
        type=float,
        metavar="P",
        help="ab: the new version's share (default 50); shadow: percent of requests "
        "mirrored (default 100)",
    )
    parser.add_argument("--steps", type=percentages, metavar="P,P,...", help="canary steps")
    parser.add_argument("--interval", type=float, metavar="SECONDS", help="canary step length")
    parser.add_argument("--cpu", metavar="Q", help="CPU requested per pod (default 250m/worker)")
    parser.add_argument(
        "--memory", metavar="Q", help="memory per pod (default: from the model's size)"
    )
    parser.add_argument(
        "--prometheus",
        metavar="URL",
        default=DEFAULT_PROMETHEUS,
        help="canary analysis: the Prometheus that scrapes the pods",
    )


def options_from_args(args: argparse.Namespace) -> K8sOptions:
    return K8sOptions(
        strategy=args.strategy,
        mesh=args.mesh,
        namespace=args.namespace,
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        image=args.image,
        candidate=args.candidate,
        weight=args.weight,
        steps=args.steps,
        interval=args.interval,
        cpu=args.cpu,
        memory=args.memory,
        prometheus=args.prometheus,
    )


def check(options: K8sOptions) -> None:
    problems: list[str] = []
    if options.strategy not in STRATEGIES:
        problems.append(f"--strategy {options.strategy!r}: one of {', '.join(STRATEGIES)}")
    if options.mesh not in MESHES:
        problems.append(f"--mesh {options.mesh!r}: one of {', '.join(MESHES)}")
    if options.namespace is not None and not _DNS_LABEL.match(options.namespace):
        problems.append(
            f"--namespace {options.namespace!r}: lowercase letters, digits and '-' (at most 63)"
        )
    if not 1 <= options.replicas <= 1000:
        problems.append(f"--replicas {options.replicas}: between 1 and 1000")
    if options.max_replicas is not None and not (options.replicas <= options.max_replicas <= 1000):
        problems.append(f"--max-replicas {options.max_replicas}: between --replicas and 1000")
    if options.weight is not None and not 0 < options.weight <= 100:
        problems.append(f"--weight {options.weight:g}: a percentage above 0, at most 100")
    if options.interval is not None and not 1 <= options.interval <= 86400:
        problems.append(f"--interval {options.interval:g}: seconds between 1 and 86400")
    if not _URL.match(options.prometheus):
        problems.append(f"--prometheus {options.prometheus!r}: an http(s) URL")
    for text, option in ((options.cpu, "--cpu"), (options.memory, "--memory")):
        try:
            check_quantity(text, option)
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ManifestError("; ".join(problems), "nbdeploy k8s --help lists the options")


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


def check_quantity(text: str | None, option: str) -> str | None:
    if text is not None and not _QUANTITY.match(text):
        raise ValueError(f"{option} {text!r}: a Kubernetes quantity such as 500m, 2, 512Mi or 1Gi")
    return text
