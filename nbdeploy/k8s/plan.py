"""Which objects a deployment needs on Kubernetes, for each rollout strategy.

- ``rolling`` (default): one Deployment of the newest version (Kubernetes' own rolling
  update, never below the replicas asked for), its Service, and optionally an autoscaler.
- ``blue-green``: a Deployment per version, the new one and the one it replaces, and a
  route that sends all traffic to the new one; the old one stays up, so that a rollback is
  one weight change (and deleting its Deployment ends it).
- ``canary``: an Argo Rollouts Rollout of the newest version with its analysis: it takes
  the ``--steps`` shares of the traffic every ``--interval`` while its success rate and
  p99 latency stay within bounds, and is rolled back otherwise.
- ``ab``: a Deployment per arm and a weighted route; each answer names its arm.
- ``shadow``: a Deployment per version; the live one answers, the new one gets a mirrored
  copy of the requests.

Routes are written for Istio (a VirtualService) or for the Gateway API (an HTTPRoute bound
to the deployment's Service). The versions, weights and canary steps default to what the
deployment does here (a running A/B test or shadow keeps its split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nbdeploy.deployment.options import DEFAULT_CANARY_STEPS, DEFAULT_INTERVAL_SECONDS
from nbdeploy.deployment.store import Deployment, DeploymentStore, Version
from nbdeploy.k8s import routing, workload
from nbdeploy.k8s.options import K8sOptions, ManifestError, check
from nbdeploy.k8s.workload import NAME_LABEL, Resources, VersionSpec


@dataclass
class Manifests:
    objects: list[dict[str, Any]]
    notices: list[str] = field(default_factory=list)
    applied: list[dict[str, Any]] = field(default_factory=list)  # as the cluster answered


def build(deployments: DeploymentStore, name: str, options: K8sOptions) -> Manifests:
    """The objects of ``name`` for ``options.strategy``, in the order to apply them."""
    check(options)
    current = deployments.get(name)
    versions = {v.version: v for v in deployments.versions(name)}
    if not versions:
        raise ManifestError(f"{name} has no version yet", f"deploy one: %deploy ... --name {name}")
    newest = max(versions)
    # What serves now, unless a new version is being rolled out.
    new = options.candidate or (
        current.live_version or newest if options.strategy == "rolling" else newest
    )
    if new not in versions:
        raise ManifestError(
            f"--candidate {new}: {name} has no version {new}",
            "versions: " + ", ".join(f"v{n}" for n in sorted(versions)),
        )
    planner = _Planner(deployments, current, versions, options)
    if options.strategy == "rolling":
        return planner.rolling(new)
    if options.strategy == "canary":
        return planner.canary(new)
    pair = planner.pair(new)
    if options.strategy == "blue-green":
        return planner.blue_green(new, pair)
    if pair is None:
        raise ManifestError(
            f"--strategy {options.strategy} needs two versions of {name}: v{new} and the one "
            "it is compared with",
            "deploy another version, or name the new one with --candidate N (versions: "
            + ", ".join(f"v{n}" for n in sorted(versions))
            + ")",
        )
    return planner.ab(new, pair) if options.strategy == "ab" else planner.shadow(new, pair)


class _Planner:
    def __init__(
        self,
        deployments: DeploymentStore,
        current: Deployment,
        versions: dict[int, Version],
        options: K8sOptions,
    ) -> None:
        self.deployments = deployments
        self.name = current.name
        self.current = current
        self.versions = versions
        self.options = options
        self.resources = Resources(
            cpu=options.cpu, memory=options.memory, request_log_claim=options.request_log_claim
        )
        self.notices: list[str] = []

    # -- versions ----------------------------------------------------------------------
    def pair(self, new: int) -> int | None:
        """The version ``new`` is set beside: the live one, or the one before it."""
        from nbdeploy.deployment.traffic.rollouts import previous_version

        live = self.current.live_version
        if live is not None and live != new and live in self.versions:
            return live
        earlier = previous_version(self.deployments, self.name, new)
        return earlier if earlier in self.versions else None

    def spec(self, number: int, count: int) -> VersionSpec:
        version = self.versions[number]
        try:
            image = workload.image_for(self.options.image, self.name, number, versions_needed=count)
        except ValueError as error:
            raise ManifestError(str(error)) from None
        return VersionSpec(
            deployment=self.name,
            number=number,
            image=image,
            bento_tag=version.bento_tag,
            content_hash=version.content_hash,
            workers=int(version.options.get("workers") or 1),
            artifacts_bytes=workload.artifacts_size(version.service_dir),
        )

    # -- objects -----------------------------------------------------------------------
    def workloads(self, specs: list[VersionSpec]) -> list[dict[str, Any]]:
        """A Deployment and a Service per version, then the Service in front of them."""
        namespace = self.options.namespace
        objects: list[dict[str, Any]] = []
        for spec in specs:
            deployment = workload.deployment(
                spec, namespace=namespace, replicas=self.options.replicas, resources=self.resources
            )
            objects.append(deployment)
            objects += self.scaling(deployment, deployment["spec"]["selector"]["matchLabels"])
            objects.append(
                workload.service(
                    spec.object_name, self.name, namespace=namespace, version_key=spec.key
                )
            )
        objects.append(workload.service(self.name, self.name, namespace=namespace))
        return objects

    def scaling(self, target: dict[str, Any], selector: dict[str, str]) -> list[dict[str, Any]]:
        objects = []
        if self.options.max_replicas:
            objects.append(
                workload.autoscaler(
                    target,
                    namespace=self.options.namespace,
                    minimum=self.options.replicas,
                    maximum=self.options.max_replicas,
                )
            )
        if self.options.replicas > 1:
            objects.append(
                workload.disruption_budget(
                    target["metadata"]["name"], selector, namespace=self.options.namespace
                )
            )
        return objects

    def route(
        self,
        backends: list[tuple[VersionSpec, int]],
        *,
        mirror: tuple[VersionSpec, float] | None = None,
        arm_header: bool = False,
    ) -> dict[str, Any]:
        hosts = [(spec.object_name, weight) for spec, weight in backends]
        if self.options.mesh == "istio":
            return routing.istio_route(
                self.name,
                self.options.namespace,
                hosts,
                mirror=(mirror[0].object_name, mirror[1]) if mirror else None,
                arm_header=arm_header,
            )
        if mirror and mirror[1] < 100:
            raise ManifestError(
                f"the Gateway API mirrors every request; --weight {mirror[1]:g} cannot be "
                "written as an HTTPRoute",
                "mirror all of them (no --weight), or use --mesh istio for a percentage",
            )
        return routing.http_route(
            self.name,
            self.options.namespace,
            hosts,
            mirror=mirror[0].object_name if mirror else None,
            arm_header=arm_header,
        )

    # -- strategies --------------------------------------------------------------------
    def rolling(self, new: int) -> Manifests:
        spec = self.spec(new, 1)
        namespace = self.options.namespace
        deployment = workload.deployment(
            spec, namespace=namespace, replicas=self.options.replicas, resources=self.resources
        )
        # One Deployment under the deployment's own name: the next version updates it.
        deployment["metadata"]["name"] = self.name
        deployment["spec"]["selector"]["matchLabels"] = {NAME_LABEL: self.name}
        objects = [deployment, *self.scaling(deployment, {NAME_LABEL: self.name})]
        objects.append(workload.service(self.name, self.name, namespace=namespace))
        return Manifests(objects, self.notices)

    def blue_green(self, new: int, old: int | None) -> Manifests:
        specs = [self.spec(n, 2 if old else 1) for n in ([old, new] if old else [new])]
        backends = [(spec, 100 if spec.number == new else 0) for spec in specs]
        objects = [*self.workloads(specs), self.route(backends)]
        if old:
            self.notices.append(
                f"v{new} takes all traffic; v{old} keeps running for a rollback (set its "
                f"weight to 100 in the {self._route_kind()}), delete its Deployment to end it"
            )
        return Manifests(objects, self.notices)

    def ab(self, new: int, old: int) -> Manifests:
        share = self.options.weight
        config = self._local_config()
        if share is None and config.get("mode") == "ab":
            weights = config.get("weights", {})
            total = sum(weights.values()) or 1
            share = 100 * weights.get(f"v{new}", 0) / total or None
        share = 50.0 if share is None else share
        if share >= 100:
            raise ManifestError(
                f"--weight {share:g}: an A/B test needs traffic on both arms",
                "a share below 100, e.g. --weight 50",
            )
        specs = [self.spec(old, 2), self.spec(new, 2)]
        new_weight = round(share)
        backends = [(specs[0], 100 - new_weight), (specs[1], new_weight)]
        objects = [*self.workloads(specs), self.route(backends, arm_header=True)]
        if config.get("sticky"):
            self.notices.append(
                "sticky routing by a key has no equivalent in mesh routes: on the cluster "
                "each request is split at random by weight"
            )
        self.notices.append(
            f"each answer names its arm in {routing.ARM_HEADER}; outcomes for nbdeploy ab "
            "are collected by nbdeploy's own router only"
        )
        return Manifests(objects, self.notices)

    def shadow(self, new: int, live: int) -> Manifests:
        percent = self.options.weight
        shadowed = self._local_config().get("shadow") or {}
        if percent is None and shadowed.get("version") == f"v{new}":
            percent = float(shadowed.get("percent") or 100)
        percent = 100.0 if percent is None else percent
        specs = [self.spec(live, 2), self.spec(new, 2)]
        objects = [
            *self.workloads(specs),
            self.route([(specs[0], 100)], mirror=(specs[1], percent)),
        ]
        return Manifests(objects, self.notices)

    def canary(self, new: int) -> Manifests:
        spec = self.spec(new, 1)
        namespace = self.options.namespace
        steps = list(self.options.steps or DEFAULT_CANARY_STEPS)
        if self.options.weight is not None:
            steps = [self.options.weight, *[s for s in steps if s > self.options.weight]]
        interval = self.options.interval or DEFAULT_INTERVAL_SECONDS
        template = workload.pod_template(spec, self.resources)
        selector = {NAME_LABEL: self.name}
        rollout, analysis = routing.argo_canary(
            self.name,
            namespace,
            replicas=self.options.replicas,
            template=template,
            selector=selector,
            steps=steps,
            interval_seconds=interval,
            mesh=self.options.mesh,
            prometheus=self.options.prometheus,
        )
        # Argo Rollouts adds the pod-template hash to these selectors as the steps go.
        stable = workload.service(f"{self.name}-stable", self.name, namespace=namespace)
        canary = workload.service(f"{self.name}-canary", self.name, namespace=namespace)
        front = workload.service(self.name, self.name, namespace=namespace)
        hosts = [(f"{self.name}-stable", 100), (f"{self.name}-canary", 0)]
        if self.options.mesh == "istio":
            route = routing.istio_route(self.name, namespace, hosts)
        else:
            route = routing.http_route(self.name, namespace, hosts)
        objects = [analysis, stable, canary, front, route, rollout]
        objects += self.scaling(rollout, selector)
        self.notices.append(
            f"the Rollout runs v{new}; applied over an earlier version it canaries v{new} "
            f"through {', '.join(f'{s:g}%' for s in steps)} every {interval:g} s; needs "
            "the Argo Rollouts controller"
            + (" and its Gateway API plugin" if self.options.mesh == "gateway-api" else "")
            + f", and Prometheus at {self.options.prometheus} scraping the pods"
        )
        return Manifests(objects, self.notices)

    def _local_config(self) -> dict[str, Any]:
        from nbdeploy.deployment import traffic

        return traffic.read_config(self.name)

    def _route_kind(self) -> str:
        return "VirtualService" if self.options.mesh == "istio" else "HTTPRoute"
