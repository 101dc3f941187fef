"""Kubernetes manifests for a deployment: ``nbdeploy k8s NAME``.

The same versions that serve on this machine, as the container images ``nbdeploy image
build`` makes, in the objects a cluster runs: Deployments, Services, autoscalers and
disruption budgets (:mod:`.workload`), and for the rollout strategies the routes of a
service mesh or an Argo Rollouts canary (:mod:`.routing`), chosen by :mod:`.plan`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdeploy.k8s.options import K8sOptions, ManifestError

if TYPE_CHECKING:
    from nbdeploy.k8s.plan import Manifests

__all__ = ["K8sOptions", "ManifestError", "manifests", "to_yaml", "write"]


def manifests(name: str, options: K8sOptions | None = None, store: Any = None) -> Manifests:
    """The objects that run deployment ``name`` on Kubernetes with ``options``."""
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.k8s.plan import build
    from nbdeploy.store import default_store

    return build(DeploymentStore(store or default_store()), name, options or K8sOptions())


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
