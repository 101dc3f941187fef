"""``nbdeploy k8s ... --apply``: the objects sent to the cluster of the user's kubeconfig
with the kubernetes Python client (the ``k8s`` extra: ``pip install 'nbdeploy[k8s]'``).

The kubeconfig is read as kubectl reads it (``$KUBECONFIG``, else ``~/.kube/config``; its
current context unless ``--context`` names another); inside a cluster without one, the
pod's service account is used. Each object is applied server-side, as ``kubectl apply
--server-side`` does: a PATCH of content type ``application/apply-patch+yaml`` with
``fieldManager=nbdeploy`` and ``force=true`` (nbdeploy owns the fields it writes), through
the client's :class:`kubernetes.dynamic.DynamicClient`, which finds each kind's API
(custom resources included) in the cluster's discovery documents.

First every object goes through a server-side dry run, so that an object the cluster
refuses (a schema error, a missing CRD or namespace, a forbidden kind) stops the apply
before anything changed; then the objects are applied in order. ``dry_run`` stops after
the first pass. Every failure is one :class:`~nbdeploy.errors.NbdeployError` that names
the server, the object and the API's own message: no kubeconfig, an unreachable server
(connection refused or no answer within a few seconds), refused credentials, a refused
object.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nbdeploy.errors import NbdeployError

FIELD_MANAGER = "nbdeploy"
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 60.0
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_INSTALL = {  # what a cluster without these APIs needs
    "argoproj.io": "install Argo Rollouts (its CRDs and controller)",
    "networking.istio.io": "install Istio",
    "gateway.networking.k8s.io": "install the Gateway API CRDs",
}


WRITE_INSTEAD = "use --out DIR to write the manifests and apply them elsewhere"


def apply_written(folder: str | Path, *, dry_run: bool = False) -> str:
    """What to do without the cluster when the manifests are written in ``folder``:
    apply them as nbdeploy would (a server-side check only, for a dry run)."""
    check = " --dry-run=server" if dry_run else ""
    return (
        f"the manifests are written in {folder}: kubectl apply --server-side{check} "
        f"-f {folder} applies them where a cluster is configured"
    )


class ClusterError(NbdeployError):
    """The cluster could not be reached, or did not take the objects."""

    exit_code = 1


def apply(
    objects: list[dict[str, Any]],
    namespace: str | None = None,
    context: str | None = None,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """Apply ``objects`` (server-side) to the cluster of the kubeconfig's ``context``;
    objects without a namespace go to ``namespace``, else to the context's. Returns the
    objects as the cluster answered."""
    return connect(context).apply(objects, namespace, dry_run=dry_run)


def kubeconfig_paths() -> list[Path]:
    """Where kubectl looks: every path of ``$KUBECONFIG``, else ``~/.kube/config``."""
    listed = os.environ.get("KUBECONFIG")
    if listed:
        return [Path(part).expanduser() for part in listed.split(os.pathsep) if part]
    return [Path("~/.kube/config").expanduser()]


def connect(context: str | None = None, instead: str = WRITE_INSTEAD) -> Cluster:
    """The cluster of the kubeconfig (``context``, else its current one), or of the pod's
    service account inside a cluster. Nothing is sent yet. ``instead`` ends the hint of
    an error: what to do without this cluster (by default: write the manifests with
    --out; :func:`apply_written` when they are written)."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise NbdeployError(
            "--apply needs the kubernetes Python client, which is not installed",
            f"pip install 'nbdeploy[k8s]' (or pip install kubernetes); or {instead}",
        ) from None
    configuration = client.Configuration()
    paths = kubeconfig_paths()
    found = [path for path in paths if path.is_file()]
    shown = os.pathsep.join(_home_relative(path) for path in paths)
    if found:
        files = os.pathsep.join(str(path) for path in found)
        try:
            config.load_kube_config(
                config_file=files,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
            contexts, current = config.list_kube_config_contexts(config_file=files)
        except Exception as error:  # the loader raises many kinds: each is the user's file
            raise NbdeployError(
                f"kubeconfig {shown}: {_first_line(error)}",
                "kubectl config get-contexts lists its contexts; --context NAME picks one",
            ) from None
        chosen = next((c for c in contexts if c.get("name") == context), None) or current
        context_name = str(chosen.get("name"))
        default_namespace = (chosen.get("context") or {}).get("namespace") or "default"
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        if context:
            raise NbdeployError(
                f"--context {context}: there is no kubeconfig at {shown}, only this pod's "
                "service account"
            )
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as error:
            raise NbdeployError(f"in-cluster configuration: {_first_line(error)}") from None
        context_name = "in-cluster"
        try:
            default_namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
        except OSError:
            default_namespace = "default"
    else:
        raise NbdeployError(
            f"no Kubernetes cluster configured: no kubeconfig at {shown} and not running in "
            "a cluster",
            f"set KUBECONFIG and run this again, or {instead}",
        )
    return Cluster(configuration, context_name, default_namespace, instead)


def _home_relative(path: Path) -> str:
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


@dataclass
class Cluster:
    """A cluster to apply objects to: its client configuration and the kubeconfig context
    it came from."""

    configuration: Any  # kubernetes.client.Configuration
    context: str
    namespace: str  # for objects that name none
    instead: str = WRITE_INSTEAD  # what to do when it cannot be reached

    @property
    def server(self) -> str:
        return str(self.configuration.host)

    def apply(
        self, objects: list[dict[str, Any]], namespace: str | None = None, *, dry_run: bool = False
    ) -> list[dict[str, Any]]:
        """Server-side apply of ``objects`` in order, after a dry run of all of them."""
        if not objects:
            return []
        self._reachable()
        with self._dynamic_client() as dynamic:
            targets = [
                (obj, self._resource(dynamic, obj), obj["metadata"].get("namespace") or namespace)
                for obj in objects
            ]
            answers: list[dict[str, Any]] = []
            for dry in (True,) if dry_run else (True, False):
                answers = []
                for obj, resource, where in targets:
                    answers.append(self._send(dynamic, resource, obj, where, dry, answers))
            return answers

    # -- steps ---------------------------------------------------------------------------
    def _reachable(self) -> None:
        """Fail in seconds, naming the address, when nothing answers there (the client's
        discovery requests have no timeout of their own)."""
        if getattr(self.configuration, "proxy", None):
            return  # the proxy decides what is reachable
        address = urlsplit(self.server)
        port = address.port or (443 if address.scheme == "https" else 80)
        try:
            with socket.create_connection(
                (address.hostname or "localhost", port), timeout=CONNECT_TIMEOUT_SECONDS
            ):
                pass
        except OSError as error:
            raise self._unreachable(error) from None

    @contextmanager
    def _dynamic_client(self) -> Iterator[Any]:
        from kubernetes import client
        from kubernetes.dynamic import DynamicClient

        # The discovery cache of this apply only: a cluster's APIs change (CRDs come
        # and go), and a cache shared in /tmp would mix users.
        with tempfile.TemporaryDirectory(prefix="nbdeploy-k8s-") as folder:
            api_client = client.ApiClient(self.configuration)
            try:
                with self._errors("the cluster's API discovery"):
                    dynamic = DynamicClient(api_client, cache_file=str(Path(folder) / "cache"))
                yield dynamic
            finally:
                api_client.close()

    def _resource(self, dynamic: Any, obj: dict[str, Any]) -> Any:
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        api_version, kind = obj["apiVersion"], obj["kind"]
        try:
            with self._errors("the cluster's API discovery"):
                return dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            group = api_version.split("/")[0] if "/" in api_version else ""
            raise ClusterError(
                f"the cluster at {self.server} has no {kind} API ({api_version}), needed for "
                f"{_named(obj)}; nothing was changed",
                _INSTALL.get(group, "kubectl api-resources lists the cluster's kinds"),
            ) from None

    def _send(
        self,
        dynamic: Any,
        resource: Any,
        obj: dict[str, Any],
        namespace: str | None,
        dry: bool,
        done: list[dict[str, Any]],
    ) -> dict[str, Any]:
        where = (namespace or self.namespace) if resource.namespaced else None
        extra: dict[str, Any] = {"dry_run": "All"} if dry else {}
        changed = "nothing was changed" if dry or not done else (
            "applied before it: " + ", ".join(_named(answer) for answer in done)
        )  # fmt: skip
        with self._errors(_named(obj), where, changed):
            answer = dynamic.server_side_apply(
                resource,
                body=obj,
                namespace=where,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                _request_timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
                **extra,
            )
        return answer.to_dict() if hasattr(answer, "to_dict") else dict(answer)

    # -- errors --------------------------------------------------------------------------
    @contextmanager
    def _errors(
        self, what: str, namespace: str | None = None, changed: str = "nothing was changed"
    ) -> Iterator[None]:
        """The client's exceptions as one clear error each."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            yield
        except ApiException as error:
            raise self._refused(error, what, namespace, changed) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise self._unreachable(error) from None

    def _unreachable(self, error: BaseException) -> ClusterError:
        reason = getattr(error, "reason", None) or error
        if isinstance(reason, ConnectionRefusedError) or "refused" in str(reason).lower():
            text = "connection refused"
        elif isinstance(reason, TimeoutError) or "timed out" in str(reason).lower():
            text = f"no answer within {CONNECT_TIMEOUT_SECONDS:g} s"
        else:
            text = _first_line(reason)
        return ClusterError(
            f"cannot reach the Kubernetes API server at {self.server} (context "
            f"{self.context}): {text}",
            "is the cluster running and reachable from here? kubectl cluster-info checks the "
            f"same kubeconfig; or {self.instead}",
        )

    def _refused(self, error: Any, what: str, namespace: str | None, changed: str) -> ClusterError:
        status = int(getattr(error, "status", 0) or 0)
        message = _api_message(error)
        place = f" in namespace {namespace}" if namespace else ""
        if status == 0:
            return self._unreachable(Exception(message))
        if status in (401, 403):
            label = "401 Unauthorized" if status == 401 else "403 Forbidden"
            hint = (
                "log in again or renew the context's credentials (kubectl auth whoami checks them)"
                if status == 401
                else "ask for the permission, or use another --context (kubectl auth can-i "
                "patch KIND -n NAMESPACE checks it)"
            )
            return ClusterError(
                f"the API server at {self.server} refused the credentials of context "
                f"{self.context} for {what}{place} ({label}): {message}; {changed}",
                hint,
            )
        missing = status == 404 and namespace and "namespace" in message.lower()
        return ClusterError(
            f"the API server at {self.server} refused {what}{place} ({status}): {message}; "
            f"{changed}",
            f"create the namespace first: kubectl create namespace {namespace}"
            if missing
            else None,
        )


def _named(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def _api_message(error: Any) -> str:
    """The API's own message (a Status object's ``message``), else the HTTP reason."""
    body = getattr(error, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        return str(message or body.strip()[:500])
    return _first_line(Exception(getattr(error, "reason", None) or "no message"))
