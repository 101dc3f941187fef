"""Kubernetes manifests for a deployment: ``nbdeploy k8s NAME``; for a pipeline:
``nbdeploy k8s --pipeline NOTEBOOK_OR_YAML``.

The same versions that serve on this machine, as the container images ``nbdeploy image
build`` makes, in the objects a cluster runs: Deployments, Services, autoscalers and
disruption budgets (:mod:`.workload`), and for the rollout strategies the routes of a
service mesh or an Argo Rollouts canary (:mod:`.routing`), chosen by :mod:`.plan`. A
notebook or pipeline.yaml runs as a Job, a CronJob or, for a sweep, an Indexed Job
(:mod:`.batch`). ``--apply`` sends the objects to the cluster of the user's kubeconfig
(:mod:`.apply`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdeploy.k8s.options import BatchOptions, K8sOptions, ManifestError

if TYPE_CHECKING:
    from nbdeploy.k8s.plan import Manifests

__all__ = [
    "BatchOptions",
    "K8sOptions",
    "ManifestError",
    "manifests",
    "pipeline_manifests",
    "to_yaml",
    "write",
    "write_and_apply",
]


def manifests(name: str, options: K8sOptions | None = None, store: Any = None) -> Manifests:
    """The objects that run deployment ``name`` on Kubernetes with ``options``."""
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.k8s.plan import build
    from nbdeploy.store import default_store

    return build(DeploymentStore(store or default_store()), name, options or K8sOptions())


def pipeline_manifests(
    target: str | Path,
    options: BatchOptions | None = None,
    *,
    parameters: Mapping[str, Any] | None = None,
    sweep: Sequence[str] = (),
) -> Manifests:
    """The Job (a CronJob with ``options.schedule``; an Indexed Job for a ``sweep``) that
    runs the notebook or pipeline.yaml ``target`` with ``nbdeploy run``."""
    from nbdeploy.k8s.batch import pipeline_manifests as build

    return build(target, options, parameters=parameters, sweep=sweep)


def from_args(args: argparse.Namespace) -> Manifests:
    """The objects ``nbdeploy k8s`` was asked for: a deployment's, or a pipeline's."""
    from nbdeploy.k8s.options import batch_options_from_args, check_command, options_from_args

    check_command(args)
    from nbdeploy.k8s.schedules import names_a_schedule

    if names_a_schedule(args.schedule):
        from nbdeploy.k8s.schedules import schedule_manifests

        return schedule_manifests(args.schedule, args)
    if args.batch:
        from nbdeploy.k8s.scoring import scoring_manifests, scoring_options_from_args

        return scoring_manifests(args.name, scoring_options_from_args(args))
    if args.pipeline:
        return pipeline_manifests(
            args.pipeline,
            batch_options_from_args(args),
            parameters=dict(args.parameter),
            sweep=args.sweep,
        )
    return manifests(args.name, options_from_args(args))


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """One multi-document YAML stream, for ``kubectl apply -f -``."""
    import yaml

    return "".join(
        "---\n" + yaml.safe_dump(obj, sort_keys=False, default_flow_style=False) for obj in objects
    )


INDEX = ".nbdeploy-k8s"  # in an output folder: the files written there last time


def write(objects: list[dict[str, Any]], directory: str | Path) -> list[Path]:
    """A file per object in ``directory`` (``kubectl apply -f DIR`` takes them in name
    order, which is the order to apply them in). Files written there by an earlier call
    are removed first, so that a folder never mixes two strategies; other files stay."""
    import yaml

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / INDEX
    if index.exists():
        for line in index.read_text(encoding="utf-8").splitlines():
            stale = folder / Path(line).name  # never outside the folder
            if line and stale.suffix == ".yaml":
                stale.unlink(missing_ok=True)
    written = []
    for number, obj in enumerate(objects, start=1):
        path = folder / f"{number:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        path.write_text(
            yaml.safe_dump(obj, sort_keys=False, default_flow_style=False), encoding="utf-8"
        )
        written.append(path)
    index.write_text("".join(f"{path.name}\n" for path in written), encoding="utf-8")
    return written


def write_and_apply(
    result: Manifests,
    *,
    out: str | Path | None = None,
    apply: bool = False,
    context: str | None = None,
    namespace: str | None = None,
    dry_run: bool = False,
) -> list[Path]:
    """Write ``result``'s objects into ``out`` and, with ``apply``, apply them to the
    cluster of the kubeconfig's ``context`` (``result.applied`` holds the cluster's
    answers). The files are written first: when the cluster cannot be had or refuses
    them, they are there to apply another way, and the error says so."""
    if not apply and (context or dry_run):
        raise ManifestError("--context and --dry-run go with --apply")
    files = write(result.objects, out) if out is not None else []
    if apply:
        from nbdeploy.k8s.apply import WRITE_INSTEAD, apply_written, connect

        instead = WRITE_INSTEAD if out is None else apply_written(out, dry_run=dry_run)
        cluster = connect(context, instead)
        result.applied = cluster.apply(result.objects, namespace, dry_run=dry_run)
    return files
