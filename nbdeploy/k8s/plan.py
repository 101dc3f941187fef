"""Which objects a deployment needs on Kubernetes, for each rollout strategy.

By default they follow what the deployment does here (:mod:`.local`): the live version
serves, and a version tried beside it (a canary, an A/B test or a shadow in progress) keeps
its share. ``--candidate N`` names a version to roll out instead.

- ``rolling`` (default): one Deployment of the live version (or of ``--candidate N``;
  Kubernetes' own rolling update, never below the replicas asked for), its Service, and
  optionally an autoscaler.
- ``blue-green``: a Deployment per version and a route that sends all traffic to one: the
  live version, beside the one tried here (ready to switch to) or the one before it (for
  a rollback); with ``--candidate N``, N takes all of it and the live one stays up, so
  that a rollback is one weight change (and deleting its Deployment ends it).
- ``canary``: an Argo Rollouts Rollout of the version tried here (from its share here
  on), of ``--candidate N``, or else of the live version, with its analysis: it takes the
  ``--steps`` shares of the traffic every ``--interval`` while its success rate and p99
  latency stay within bounds, and is rolled back otherwise.
- ``ab``: a Deployment per arm (the live version and the one tried) and a weighted route;
  each answer names its arm.
- ``shadow``: a Deployment per version; the live one answers, the one tried gets a
  mirrored copy of the requests.

Routes are written for Istio (a VirtualService) or for the Gateway API (an HTTPRoute bound
to the deployment's Service).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nbdeploy.deployment.options import DEFAULT_CANARY_STEPS, DEFAULT_INTERVAL_SECONDS
from nbdeploy.deployment.store import Deployment, DeploymentStore, Version
from nbdeploy.deployment.traffic.strategies.experiment import (
    DEFAULT_AB_SHARE,
    DEFAULT_SHADOW_PERCENT,
)
from nbdeploy.k8s import local, routing, workload
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
    chosen = options.candidate
    if chosen is not None and chosen not in versions:
        raise ManifestError(
            f"--candidate {chosen}: {name} has no version {chosen}",
            "versions: " + _listed(versions),
        )
    return _Planner(deployments, current, versions, options).plan()


def _listed(numbers: Iterable[int]) -> str:
    return ", ".join(f"v{n}" for n in sorted(numbers)) or "none"


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
        self.versions = versions
        self.options = options
        self.here = local.read(current, versions)
        self.resources = Resources(
            cpu=options.cpu, memory=options.memory, request_log_claim=options.request_log_claim
        )
        self.notices: list[str] = []

    def plan(self) -> Manifests:
        if not self.here.live_here:
            self.notices.append(
                f"no version of {self.name} is live here: the manifests serve the newest, "
                f"v{self.here.live}"
            )
        strategy, chosen = self.options.strategy, self.options.candidate
        if strategy == "rolling":
            return self.rolling(self.here.live if chosen is None else chosen)
        if strategy == "blue-green":
            return self.blue_green()
        # The version tried: the one named, else the one tried here (if any).
        new = self.here.candidate if chosen is None else chosen
        if strategy == "canary":
            return self.canary(new)
        if new is None:
            raise self._nothing_tried()
        beside = self.pair(new)
        if beside is None:
            raise ManifestError(
                f"--strategy {strategy} needs two versions of {self.name}: v{new} and the one "
                "it is compared with",
                "deploy another version, or name the new one with --candidate N (versions: "
                + _listed(self.versions)
                + ")",
            )
        return self.ab(new, beside) if strategy == "ab" else self.shadow(new, beside)

    # -- versions ----------------------------------------------------------------------
    def pair(self, new: int) -> int | None:
        """The version ``new`` is set beside: the live one, or the one before it."""
        from nbdeploy.deployment.traffic.rollouts import previous_version

        if self.here.live_here and self.here.live != new:
            return self.here.live
        earlier = previous_version(self.deployments, self.name, new)
        return earlier if earlier in self.versions else None

    def _nothing_tried(self) -> ManifestError:
        strategy, live = self.options.strategy, self.here.live
        others = [number for number in self.versions if number != live]
        return ManifestError(
            f"--strategy {strategy} needs a version to try beside v{live}, the live version "
            f"of {self.name}, and none is tried here (no canary, A/B test or shadow in "
            "progress)",
            f"name the version to try with --candidate N (versions: {_listed(others)})"
            if others
            else f"deploy another version first (%deploy ... --name {self.name} --strategy "
            f"{strategy} tries it here too)",
        )

    def _switch_hint(self, serving: int) -> str:
        others = [number for number in self.versions if number != serving]
        return "name a version to roll out with --candidate N" + (
            f" (versions: {_listed(others)})" if others else ""
        )

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

    def blue_green(self) -> Manifests:
        """All traffic to one version, another one beside it without any: by default the
        live version serves, beside the one tried here (ready to switch to) or else the
        one before it (for a rollback); with --candidate N, N takes over from the live one."""
        live, chosen, tried = self.here.live, self.options.candidate, self.here.candidate
        kind = self._route_kind()
        if chosen is not None and chosen != live:
            serving, beside = chosen, self.pair(chosen)
            follows = ""
        else:
            serving = live
            beside = tried if tried is not None else self.pair(live)
            follows = ", as it is live here"
        numbers = [serving] if beside is None else [beside, serving]
        specs = [self.spec(number, len(numbers)) for number in numbers]
        backends = [(spec, 100 if spec.number == serving else 0) for spec in specs]
        objects = [*self.workloads(specs), self.route(backends)]
        notice = f"v{serving} takes all traffic{follows}"
        if beside is not None and beside == tried and serving == live:
            notice += (
                f"; v{beside}, in {self.here.tried()} here, runs beside it without traffic: "
                f"set its weight to 100 in the {kind} to switch to it, or write the switch "
                f"with --candidate {beside}"
            )
        elif beside is not None:
            notice += (
                f"; v{beside} keeps running for a rollback (set its weight to 100 in the "
                f"{kind}), delete its Deployment to end it"
            )
        if serving == live and tried is None:
            notice += "; " + self._switch_hint(live)
        self.notices.append(notice)
        return Manifests(objects, self.notices)

    def ab(self, new: int, old: int) -> Manifests:
        share = self.options.weight
        if share is None:
            share = self.here.traffic_share(new)
        share = DEFAULT_AB_SHARE if share is None else share
        if share >= 100:
            raise ManifestError(
                f"--weight {share:g}: an A/B test needs traffic on both arms",
                "a share below 100, e.g. --weight 50",
            )
        specs = [self.spec(old, 2), self.spec(new, 2)]
        new_weight = round(share)
        backends = [(specs[0], 100 - new_weight), (specs[1], new_weight)]
        objects = [*self.workloads(specs), self.route(backends, arm_header=True)]
        self._follows(new, f"v{old} {100 - new_weight}%, v{new} {new_weight}%")
        if self.here.sticky and self.here.candidate == new:
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
        if percent is None:
            percent = self.here.mirrored(new)
        percent = DEFAULT_SHADOW_PERCENT if percent is None else percent
        specs = [self.spec(live, 2), self.spec(new, 2)]
        objects = [
            *self.workloads(specs),
            self.route([(specs[0], 100)], mirror=(specs[1], percent)),
        ]
        self._follows(new, f"v{live} answers, v{new} gets a copy of {percent:g}% of the requests")
        return Manifests(objects, self.notices)

    def canary(self, new: int | None) -> Manifests:
        """An Argo Rollout of ``new`` (none tried: of the live version), its steps from
        the share it has here on."""
        version = self.here.live if new is None else new
        spec = self.spec(version, 1)
        namespace = self.options.namespace
        tried_here = version == self.here.candidate
        steps = list(
            self.options.steps or (self.here.steps if tried_here else None) or DEFAULT_CANARY_STEPS
        )
        start = self.options.weight
        if start is None:
            start = self.here.traffic_share(version)
        if start is not None:
            steps = [start, *[s for s in steps if s > start]]
        interval = (
            self.options.interval
            or (self.here.interval if tried_here else None)
            or DEFAULT_INTERVAL_SECONDS
        )
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
        stepping = f"through {', '.join(f'{s:g}%' for s in steps)} every {interval:g} s"
        live = self.here.live
        if new is None:
            runs = (
                f"no canary, A/B test or shadow of {self.name} is in progress here: the "
                f"Rollout runs v{live}, the live version; {self._switch_hint(live)}"
            )
        elif tried_here and self.options.candidate is None:
            runs = (
                f"the Rollout runs v{version}, in {self.here.tried()} here: applied over the "
                f"Rollout of v{live} (the live version) it canaries v{version} {stepping}; "
                f"on a cluster without a Rollout of {self.name} yet, v{version} starts at "
                f"once (write v{live}'s first with --candidate {live})"
            )
        else:
            runs = (
                f"the Rollout runs v{version}; applied over an earlier version it canaries "
                f"v{version} {stepping}"
            )
        self.notices.append(
            runs
            + "; needs the Argo Rollouts controller"
            + (" and its Gateway API plugin" if self.options.mesh == "gateway-api" else "")
            + f", and Prometheus at {self.options.prometheus} scraping the pods"
        )
        return Manifests(objects, self.notices)

    def _follows(self, new: int, split: str) -> None:
        """Say that the split is the one tried here, when it is."""
        if self.options.candidate is None and new == self.here.candidate:
            self.notices.append(f"v{new} is the version in {self.here.tried()} here: {split}")

    def _route_kind(self) -> str:
        return "VirtualService" if self.options.mesh == "istio" else "HTTPRoute"
