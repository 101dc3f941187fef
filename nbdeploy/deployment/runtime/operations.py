"""The requests that change a deployment, as the daemon runs them (in the deployment's
queue, one at a time): each takes the job's arguments, calls the core's implementation
and answers a small JSON-able dict. The faces reach them through
:func:`nbdeploy.deployment.runtime.client.call`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nbdeploy.deployment.runtime.supervision import heal

if TYPE_CHECKING:
    from nbdeploy.deployment.runtime.daemon import Daemon, Job
    from nbdeploy.deployment.store import DeploymentStore


def _deployments() -> DeploymentStore:
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.store import default_store

    return DeploymentStore(default_store())


def _outcome(name: str) -> dict[str, Any]:
    deployment = _deployments().get(name)
    return {
        "status": deployment.status,
        "live_version": deployment.live_version,
        "url": deployment.url,
    }


def switch(daemon: Daemon, job: Job) -> dict[str, Any]:
    """A deploy's rollout of a prepared version (``args``: version, host, port, strategy,
    keep_warm, options, env)."""
    from nbdeploy.deployment.options import DeployOptions
    from nbdeploy.deployment.runtime.locks import deployment_lock
    from nbdeploy.deployment.store import SERVING
    from nbdeploy.deployment.traffic.rollouts import switch_to

    args = job.args
    deployments = _deployments()
    version = deployments.version(job.name, int(args["version"]))
    options = DeployOptions(**args["options"]) if args.get("options") else DeployOptions()
    host, port = str(args.get("host") or options.host), args.get("port")
    current = deployments.find(job.name)
    if (
        current is not None
        and current.status == SERVING
        and current.live_version == version.version
        and (port is None or port == current.port)
        and host == current.host
    ):
        return {**_outcome(job.name), "unchanged": True}
    with deployment_lock(job.name, job.notify):
        switch_to(
            deployments,
            job.name,
            version,
            host=host,
            port=port,
            strategy=str(args.get("strategy") or options.strategy),
            keep_warm=float(args.get("keep_warm", options.keep_warm)),
            options=options,
            notify=job.notify,
            cancelled=job.cancelled,
            env=_server_environment(daemon, args.get("env")),
        )
    return {**_outcome(job.name), "unchanged": False}


def _server_environment(daemon: Daemon, env: dict[str, str] | None) -> dict[str, str] | None:
    """The caller's environment for the version's server, with this daemon's home (the
    caller may have named the home by its state store, not by NBDEPLOY_HOME)."""
    from nbdeploy import config

    if env is None:
        return None
    return {**env, config.HOME_ENV: str(daemon.home)}


def stop(daemon: Daemon, job: Job) -> dict[str, Any]:
    """End the canary controller, the versions, then the router, and give up its address."""
    from nbdeploy.deployment.runtime.locks import deployment_lock
    from nbdeploy.deployment.runtime.processes import stop_process
    from nbdeploy.deployment.store import STOPPED
    from nbdeploy.deployment.traffic.strategies import canary

    deployments = _deployments()
    current = deployments.get(job.name)
    canary.stop_controller(job.name)
    with deployment_lock(job.name):
        for server in deployments.active_servers(job.name):
            if server.container:
                from nbdeploy.image.container import stop_server

                stop_server(server)
            elif server.pid:
                stop_process(server.pid, server.start_ticks, marker=server.log_path)
            deployments.end_server(server.id, STOPPED)
        daemon.supervisor.release_listener(job.name, current.host, current.port)
        deployments.set_state(job.name, status=STOPPED, live_version=current.live_version)
        deployments.add_event(job.name, "stopped", version=current.live_version)
    return _outcome(job.name)


def rollback(daemon: Daemon, job: Job) -> dict[str, Any]:
    from nbdeploy.deployment.traffic.rollouts import roll_back

    to = job.args.get("to")
    roll_back(_deployments(), job.name, job.notify, to=int(to) if to is not None else None)
    return _outcome(job.name)


def promote(daemon: Daemon, job: Job) -> dict[str, Any]:
    from nbdeploy.deployment.traffic.rollouts import promote_candidate

    promote_candidate(_deployments(), job.name, job.notify)
    return _outcome(job.name)


def weights(daemon: Daemon, job: Job) -> dict[str, Any]:
    from nbdeploy.deployment.traffic.rollouts import split_traffic

    split_traffic(_deployments(), job.name, dict(job.args.get("weights") or {}))
    return _outcome(job.name)


def rotate_key(daemon: Daemon, job: Job) -> dict[str, Any]:
    from nbdeploy.deployment.traffic.rollouts import new_key

    new_key(_deployments(), job.name)
    return _outcome(job.name)


OPERATIONS = {
    "switch": switch,
    "stop": stop,
    "rollback": rollback,
    "promote": promote,
    "weights": weights,
    "rotate_key": rotate_key,
    "heal": heal,
}
