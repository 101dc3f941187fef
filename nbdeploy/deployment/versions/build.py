"""From a capture to a registered, built version: plan (hash) it, pin its requirements (with
an example call in a fresh interpreter when there is one), reuse the version with the same
content, or write it, build its bento offline and record it.

Each step is a function of its own so that the strategies, images and monitoring build on
the same path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy import config
from nbdeploy.deployment.runtime.processes import free_port
from nbdeploy.deployment.store import DeploymentStore, Version
from nbdeploy.errors import DeployError, NbdeployError
from nbdeploy.private_files import private_dir, write_private_text

Notify = Callable[[str], None]
BUILD_TIMEOUT_SECONDS = 600
PROBE_TIMEOUT_SECONDS = 120


class BuildError(NbdeployError):
    """Building a version failed; nothing was recorded and nothing serving changed."""

    exit_code = 1


@dataclass
class PreparedVersion:
    version: Version
    built: bool
    requirements: list[str]
    notices: list[str] = field(default_factory=list)
    example: dict[str, Any] | None = None
    new: bool = False  # a new version record (to register in MLflow)


def deployments_dir() -> Path:
    return private_dir(config.home() / "deployments")


def prepare_version(
    captured: Any,
    *,
    name: str,
    options: Any,
    reference: Any,
    source: dict[str, Any],
    deployments: DeploymentStore,
    notify: Notify,
    history: list[str],
) -> PreparedVersion:
    """The version of ``captured``: reused when its content was deployed before, else
    written and built. Raises before anything is recorded when it cannot be built."""
    from nbdeploy.service.capture import changed_since_import
    from nbdeploy.service.package import ServiceOptions, plan_version
    from nbdeploy.service.requirements import notebook_pip_installs

    launching = _launcher_soon()  # warm by the time the version is written
    label = str(source.get("notebook") or "an interactive session")
    plan = plan_version(
        captured,
        ServiceOptions(
            name=name,
            workers=options.workers,
            batch=options.batch,
            extra_columns=options.extra_columns,
            log_sample=options.log_sample,
            redact=list(options.redact),
        ),
        reference,
        label,
    )
    example = example_request(plan, reference)
    notices: list[str] = []
    for module, path in sorted(captured.local_modules.items()):
        changed = changed_since_import(module)
        if changed and not options.from_files:
            more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            shown = ", ".join(changed[:5]) + more
            raise DeployError(
                f"local module {module} ({path}) changed on disk since this kernel imported "
                f"it ({shown}): the version would serve the file's code, not what the kernel "
                "runs",
                f"reload it (importlib.reload({module}), or restart the kernel and run the "
                "notebook again), or deploy the files as they are now with --from-files",
            )
        if changed:
            notify(
                f"local module {module} ({path}) is snapshotted from its file, which differs "
                "from what the kernel imported (--from-files)"
            )
        else:
            notify(f"local module {module} ({path}) is snapshotted into the version")
    for line in notebook_pip_installs(history):
        notices.append(
            f"the notebook ran `{line}`: its packages are included only if the function uses them"
        )
    staging = deployments_dir() / name / f".staging-{os.getpid()}-{time.monotonic_ns()}"
    try:
        if example is not None and will_probe(plan, example):
            built_version = _build_beside_probe(
                plan, options, example, staging, notices, notify, launching
            )
        else:
            cache = _probe_cache(plan)
            probed = json.loads(cache.read_text(encoding="utf-8")) if cache.exists() else None
            requirements = _pin(plan, options, probed, notices)
            _tell(notices, requirements, notify)
            existing = deployments.version_with_hash(name, plan.content_hash)
            if existing is not None and Path(existing.service_dir).is_dir():
                notify(f"unchanged since version {existing.version}: reusing its build")
                return PreparedVersion(existing, False, requirements, notices, example)
            built_version = _build(plan, staging, notify, launching)
        version_dir, bento_tag, built = built_version
        reference_path = _save_reference(reference, version_dir)
        _profile_reference(captured, plan, reference, version_dir, notify)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    version = add_version(
        deployments,
        options.host,
        options.port,
        Version(
            deployment=name,
            version=0,
            content_hash=plan.content_hash,
            bento_tag=bento_tag,
            function=captured.name,
            service_dir=str(version_dir),
            created_at=time.time(),
            source=dict(source),
            requirements=plan.requirements,
            schema={
                **plan.schema.to_dict(),
                "route": plan.routes[0],
                "routes": plan.routes,
                "inputs": plan.inputs(),
                "example": example,
                "kind": captured.kind,
            },
            options={
                "workers": options.workers,
                "batch": plan.batch,
                "log_sample": plan.options.log_sample,
                "redact": plan.request_log["redact"],
            },
            reference_path=reference_path,
        ),
    )
    return PreparedVersion(version, built, plan.requirements, notices, example, new=True)


def add_version(
    deployments: DeploymentStore, host: str, port: int | None, version: Version
) -> Version:
    """Record a new version (its number is the next one) through the daemon, the store's
    only writer; the deployment is created with its first version, at ``host``:``port``
    (a free port when None)."""
    from dataclasses import asdict

    from nbdeploy.deployment.runtime import client

    fields = {"version": asdict(version), "host": host, "port": port or free_port(host)}
    answer = client.record("version", fields, home=client.home_of(deployments.store))
    return deployments.version(version.deployment, int(answer["version"]))


def _object_kinds(plan: Any) -> list[str]:
    """The framework savers the build will use (their imports can start early)."""
    return sorted({spec["kind"] for spec in plan.object_specs} - {"generic"})


def _launcher_soon() -> Any:
    """The warm launcher (a Future of it, or of None), started in the background now."""
    from nbdeploy.deployment.runtime import launcher

    executor = ThreadPoolExecutor(1, thread_name_prefix="nbdeploy-launcher")
    future = executor.submit(launcher.ensure, launcher.framework_modules())
    executor.shutdown(wait=False)
    return future


def _builder(kinds: list[str], launching: Any) -> WarmBuilder | ForkedBuilder:
    """A build forked from the warm launcher, else a builder process of its own."""
    running = launching.result() if launching is not None else None
    if running is not None:
        return ForkedBuilder(running, kinds)
    return WarmBuilder(kinds)


def _build(plan: Any, staging: Path, notify: Notify, launching: Any) -> tuple[Path, str, bool]:
    """Write and build a version whose requirements are known: (folder, bento tag, built)."""
    builder = _builder(_object_kinds(plan), launching)  # its imports overlap the writing
    try:
        version_dir = _write(plan, staging, plan.name)
        notify(f"building {plan.name} (offline, pinned requirements)")
        return (version_dir, *builder.build(version_dir))
    finally:
        builder.close()


def _build_beside_probe(
    plan: Any,
    options: Any,
    example: dict[str, Any],
    staging: Path,
    notices: list[str],
    notify: Notify,
    launching: Any,
) -> tuple[Path, str, bool]:
    """New code: the example call (which may add requirements) runs in a process of its own
    while the version is built with the requirements known so far; a rare addition renames
    the version and builds it again."""
    _pin(plan, options, None, [])
    builder = _builder(_object_kinds(plan), launching)
    probe: ProbeProcess | ForkedProbe | None = None
    try:
        version_dir = _write(plan, staging, plan.name)
        if isinstance(builder, ForkedBuilder):
            probe = ForkedProbe(builder.launcher, version_dir, example)
        else:
            probe = ProbeProcess(version_dir, example)
        notify(f"building {plan.name} (offline, pinned requirements)")
        bento_tag, built = builder.build(version_dir)
        probed = probe.result(_probe_cache(plan))
    finally:
        builder.close()
        if probe is not None:
            probe.close()
    first_hash = plan.content_hash
    _tell(notices, _pin(plan, options, probed, notices), notify)
    if plan.content_hash != first_hash:
        version_dir = _rehome(plan, version_dir, plan.name)
        obsolete, (bento_tag, built) = bento_tag, build_bento(version_dir)
        _discard_bento(obsolete)
    return version_dir, bento_tag, built


def example_request(plan: Any, reference: Any) -> dict[str, Any] | None:
    """A request body the service accepts: the reference's first row, else a row built
    from the schema (the model's declared number of features)."""
    from nbdeploy.service.schema import example_rows, placeholder_row

    schema = plan.schema
    if schema.mode in ("records", "rows"):
        rows = example_rows(reference, schema) if reference is not None else None
        if rows is None and (schema.mode == "records" or schema.width):
            rows = [placeholder_row(schema)]
        return {schema.parameter: rows} if rows is not None else None
    inputs = plan.signature.get("annotations", {})
    if reference is not None and len(inputs) == 1:
        rows = example_rows(reference, schema)
        return {next(iter(inputs)): rows}
    return None


def _runtime_modules(plan: Any) -> set[str]:
    """What the generated service itself imports besides BentoML."""
    modules = {"cloudpickle"}
    if plan.schema.mode == "records":
        modules.update({"pandas", "numpy"})
    if plan.schema.as_array:
        modules.add("numpy")
    return modules


def _probe_cache(plan: Any) -> Path:
    return deployments_dir() / plan.name / "probes" / f"{plan.base_hash[:16]}.json"


def will_probe(plan: Any, example: dict[str, Any] | None) -> bool:
    """An example call in a fresh interpreter is due: new code with an example to call."""
    return (
        example is not None and plan.captured.kind == "function" and not _probe_cache(plan).exists()
    )


def _pin(plan: Any, options: Any, probed: dict[str, Any] | None, notices: list[str]) -> list[str]:
    """Pinned requirements: what the capture uses, what the service needs, what the example
    call imported in a fresh interpreter (``probed``), and the user's."""
    from nbdeploy.service.package import set_requirements
    from nbdeploy.service.requirements import pin_requirements

    modules = set(plan.captured.modules) | _runtime_modules(plan)
    modules -= set(plan.captured.local_modules)
    if probed is not None:
        if probed.get("error"):
            notices.append(f"the example call fails in a fresh interpreter: {probed['error']}")
        extra = set(probed.get("modules", [])) - set(plan.captured.local_modules)
        before = set(pin_requirements(modules).pinned)
        modules |= extra
        added = sorted(set(pin_requirements(modules).pinned) - before)
        if added:
            notices.append("imported when called (added): " + ", ".join(added))
    pinned = pin_requirements(modules, options.requirements)
    for module in pinned.unresolved:
        notices.append(
            f"module {module!r} is not from an installed distribution: the service will not have it"
        )
    set_requirements(plan, pinned.pinned)
    return plan.requirements


def _tell(notices: list[str], requirements: list[str], notify: Notify) -> None:
    for notice in notices:
        notify(notice)
    notify("requirements: " + (", ".join(requirements) or "none"))


def last_json(output: str) -> dict[str, Any] | None:
    """The one JSON object a helper process prints last, or None when it printed none."""
    try:
        answer: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return None
    return answer


class ProbeProcess:
    """The example call in a fresh interpreter (:mod:`nbdeploy.service.probe`), running
    beside the build."""

    def __init__(self, directory: Path, example: dict[str, Any]) -> None:
        from nbdeploy.service.probe import EXAMPLE

        self.example_path = directory / EXAMPLE
        write_private_text(self.example_path, json.dumps(example, default=str))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nbdeploy.service.probe", str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=directory,
        )

    def result(self, cache: Path) -> dict[str, Any] | None:
        """Its answer (kept in ``cache``, by the version's code), or None when it gave none."""
        try:
            out, _ = self.process.communicate(timeout=PROBE_TIMEOUT_SECONDS)
            answer = last_json(out)
        except subprocess.TimeoutExpired:
            answer = None
        finally:
            self.close()
        return _save_probe(answer, cache)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
        self.example_path.unlink(missing_ok=True)


def _write(plan: Any, staging: Path, name: str) -> Path:
    """Write the version and move it into place, named by its content hash."""
    from nbdeploy.service.package import write_version

    write_version(plan, staging)
    return _move(staging, _version_dir(plan, name))


def _rehome(plan: Any, version_dir: Path, name: str) -> Path:
    """The requirements grew after the version was written: rename it by its new hash."""
    from nbdeploy.service.package import write_manifest

    write_manifest(plan, version_dir)
    return _move(version_dir, _version_dir(plan, name))


def _version_dir(plan: Any, name: str) -> Path:
    return deployments_dir() / name / "versions" / plan.content_hash[:16]


def _move(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)  # a leftover of an interrupted deploy: replace it
    private_dir(target.parent)
    source.rename(target)
    return target


def _discard_bento(tag: str) -> None:
    """A bento built with the requirements known before the example call ran."""
    from nbdeploy.deployment.versions.prune import delete_from_bentoml

    delete_from_bentoml([tag], [])


def _save_reference(reference: Any, version_dir: Path) -> str | None:
    if reference is None:
        return None
    from nbdeploy.service.serialize import save

    path = version_dir / "reference.pkl"
    save(reference, path, label="the reference data")
    return str(path)


def _profile_reference(
    captured: Any, plan: Any, reference: Any, version_dir: Path, notify: Notify
) -> None:
    """The baseline of drift monitoring: the reference and the predictions on it."""
    if reference is None:
        return
    from nbdeploy.monitor.reference import write_profile

    if captured.kind == "model":
        answer = getattr(captured.objects[captured.name], "predict", None)
    else:
        answer = captured.function
    manifest = {"schema": plan.schema.to_dict(), "kind": captured.kind}
    write_profile(reference, version_dir, answer=answer, manifest=manifest, notify=notify)


def _builder_environment() -> dict[str, str]:
    from nbdeploy.service.builder import bentoml_environment

    return {
        **os.environ,
        **bentoml_environment(),
        config.MLFLOW_URI_ENV: config.mlflow_tracking_uri(),
    }


def _build_answer(result: dict[str, Any] | None, errors: str) -> tuple[str, bool]:
    if result is None:
        last = "\n".join(errors.strip().splitlines()[-15:])
        raise BuildError(f"building the service failed: {last}")
    if not result.get("ok"):
        detail = "\n".join(errors.strip().splitlines()[-10:])
        raise BuildError(f"building the service failed: {result.get('error')}\n{detail}".rstrip())
    return str(result["bento_tag"]), not result.get("reused", False)


def build_bento(version_dir: Path) -> tuple[str, bool]:
    """Build (or reuse) the bento of a written version in a separate process."""
    from nbdeploy.deployment.runtime import launcher

    running = launcher.running()
    if running is not None:
        return ForkedBuilder(running, []).build(version_dir)
    return build_in_own_process(version_dir)


class WarmBuilder:
    """A builder process started before it is needed: its imports (BentoML, the framework
    savers: seconds) overlap the example call and the writing of the version."""

    def __init__(self, kinds: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nbdeploy.service.builder", *kinds],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_builder_environment(),
        )

    def build(self, version_dir: Path) -> tuple[str, bool]:
        try:
            out, errors = self.process.communicate(
                f"{version_dir}\n", timeout=BUILD_TIMEOUT_SECONDS
            )
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise BuildError(
                f"building the service took longer than {BUILD_TIMEOUT_SECONDS} s"
            ) from None
        return _build_answer(last_json(out), errors)

    def close(self) -> None:
        """End the process if no build was asked of it (also on errors and interrupts)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def _save_probe(answer: dict[str, Any] | None, cache: Path) -> dict[str, Any] | None:
    if answer is not None:
        private_dir(cache.parent)
        write_private_text(cache, json.dumps(answer))
    return answer


class ForkedBuilder:
    """A build forked from the warm launcher (BentoML imported already)."""

    def __init__(self, running: Any, kinds: list[str]) -> None:
        self.launcher = running
        running.preload(f"bentoml.{kind}" for kind in kinds)

    def build(self, version_dir: Path) -> tuple[str, bool]:
        from nbdeploy.deployment.runtime.launcher import LauncherError

        try:
            answer = self.launcher.run(
                "build", version_dir, _builder_environment(), BUILD_TIMEOUT_SECONDS
            )
        except LauncherError:
            return build_in_own_process(version_dir)
        return _build_answer(answer, "")

    def close(self) -> None:
        """Nothing to end: the forked build ended with its answer."""


def build_in_own_process(version_dir: Path) -> tuple[str, bool]:
    builder = WarmBuilder([])
    try:
        return builder.build(version_dir)
    finally:
        builder.close()


class ForkedProbe:
    """The example call forked from the warm launcher, running beside the build."""

    def __init__(self, running: Any, directory: Path, example: dict[str, Any]) -> None:
        from nbdeploy.service.probe import EXAMPLE

        self.directory = directory
        self.example = example
        self.example_path = directory / EXAMPLE
        write_private_text(self.example_path, json.dumps(example, default=str))
        executor = ThreadPoolExecutor(1, thread_name_prefix="nbdeploy-probe")
        self.future = executor.submit(
            running.run, "probe", directory, _builder_environment(), PROBE_TIMEOUT_SECONDS
        )
        executor.shutdown(wait=False)

    def result(self, cache: Path) -> dict[str, Any] | None:
        """Its answer (kept in ``cache``); in a fresh interpreter when the launcher failed."""
        from nbdeploy.deployment.runtime.launcher import LauncherError

        try:
            answer: dict[str, Any] | None = self.future.result()
        except LauncherError:
            return ProbeProcess(self.directory, self.example).result(cache)
        if answer is not None and not answer.pop("ok", False) and "modules" not in answer:
            answer = None
        self.close()
        return _save_probe(answer, cache)

    def close(self) -> None:
        self.example_path.unlink(missing_ok=True)
