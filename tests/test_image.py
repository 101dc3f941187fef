"""Container images (nbdeploy/image/): built offline with a real Docker engine from the example
notebook's deployed version, run beside the local service, compared with it.

`make test` provides the engine and a registry-free base image (tests/docker/engine.sh) and
sets DOCKER_HOST and NBDEPLOY_TEST_BASE_IMAGE; without them these tests skip, and fail when
CI is set. The wheelhouse and Dockerfile tests need no engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CliResult, require_component
from support import post, ready

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "example_notebooks" / "train.ipynb"
BASE_IMAGE = os.environ.get("NBDEPLOY_TEST_BASE_IMAGE", "nbdeploy-test/python3:bookworm")
ROWS = [[round(0.1 * i - 0.05 * j, 3) for i in range(20)] for j in range(6)]


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    import docker

    try:
        api = docker.from_env(timeout=600).api
        api.ping()
        available = api.inspect_image(BASE_IMAGE) is not None
    except Exception:
        available = False
    require_component(
        f"a Docker engine with the base image {BASE_IMAGE}",
        available,
        "run the tests with make test (tests/docker/engine.sh starts one), or set DOCKER_HOST",
    )
    yield api
    for container in api.containers(all=True, filters={"label": "ai.nbdeploy.deployment"}):
        api.remove_container(container["Id"], force=True)


def _deploy(cli: Callable[..., CliResult], notebook: Path, name: str = "predict") -> dict[str, Any]:
    deployed = cli("deploy", str(notebook), "--name", name, "--no-mlflow", timeout=300)
    assert deployed.code == 0, deployed
    status: dict[str, Any] = cli("status", name, "--json").json[0]
    return status


def _build(cli: Callable[..., CliResult], spec: str, *extra: str) -> dict[str, Any]:
    built = cli(
        "image",
        "build",
        spec,
        "--offline",
        "--base-image",
        BASE_IMAGE,
        "--json",
        *extra,
        timeout=900,
    )
    assert built.code == 0, built
    result: dict[str, Any] = built.json
    return result


def _changed_function(tmp_path: Path) -> Path:
    """The example notebook with a different ``predict`` (same model, same requirements)."""
    notebook = json.loads(TRAIN.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if "def predict" in source:
            cell["source"] = source.replace(
                "return model.predict(", "classes = model.predict("
            ).replace(".tolist()\n", ".tolist()\n    return [int(c) for c in classes]\n", 1)
    changed = tmp_path / "train_v2.ipynb"
    changed.write_text(json.dumps(notebook), encoding="utf-8")
    return changed


@pytest.mark.integration
def test_image_serves_the_same_version_and_rebuild_reuses_dependencies(
    engine: Any, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    local = _deploy(cli, TRAIN)
    built = _build(cli, "predict")
    assert built["image"] == "nbdeploy/predict:v1"
    assert built["size"] > 0 and built["seconds"] > 0

    # Labels: OCI name and version, the source notebook, the commit, the requirements hash.
    image = engine.inspect_image("nbdeploy/predict:v1")
    labels = image["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "predict"
    assert labels["org.opencontainers.image.version"] == "v1"
    assert labels["ai.nbdeploy.notebook"] == str(TRAIN)
    assert re.fullmatch(r"[0-9a-f]{64}", labels["ai.nbdeploy.requirements-hash"])
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode == 0:
        assert labels["org.opencontainers.image.revision"] == head.stdout.strip()
    assert image["Config"]["User"] == "10001:10001"
    assert "3000/tcp" in image["Config"]["ExposedPorts"]
    assert "/readyz" in " ".join(image["Config"]["Healthcheck"]["Test"])

    # The image answers /predict exactly as the local service does.
    running = cli("image", "run", "predict", "--json", timeout=180)
    assert running.code == 0, running
    container_url = running.json["url"]
    assert container_url.startswith("http://127.0.0.1:")
    assert ready(container_url)
    local_answer = post(f"{local['url']}/predict", {"rows": ROWS})
    image_answer = post(f"{container_url}/predict", {"rows": ROWS})
    assert image_answer == local_answer
    assert image_answer[0] == 200
    refused = post(f"{container_url}/predict", {"rows": [["not a number"] * 20]})
    assert refused[0] == post(f"{local['url']}/predict", {"rows": [["not a number"] * 20]})[0]
    assert refused[0] in (400, 422)

    # It is a server of the deployment: status shows it, logs read it, stop removes it.
    servers = cli("status", "predict", "--json").json[0]["servers"]
    container = next(s for s in servers if s["role"] == "container")
    assert container["url"] == container_url and container["container"]
    assert "container" in cli("status").out
    assert 'BentoServer from "nbd-predict:' in cli("logs", "predict", "--tail", "400").out
    assert cli("stop", "predict").code == 0
    assert engine.containers(all=True, filters={"id": container["container"]}) == []

    # A change to the function alone: the dependency image is reused as it is, the model
    # layer comes from the engine's cache, only the code is new.
    _deploy(cli, _changed_function(tmp_path))
    rebuilt = _build(cli, "predict:2")
    assert rebuilt["image"] == "nbdeploy/predict:v2"
    assert rebuilt["dependencies_reused"] is True
    assert rebuilt["dependencies_image"] == built["dependencies_image"]
    steps = {
        step["instruction"].split()[1]: step["cached"]
        for step in rebuilt["steps"]["service"]
        if step["instruction"].startswith("COPY")
    }
    assert steps == {"models/": True, "bento/": False}
    cli("stop", "predict")


@pytest.mark.integration
def test_hostile_notebook_name_cannot_add_instructions(
    engine: Any, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    hostile = tmp_path / 'evil" $HOME \\ \nRUN touch pwned #.ipynb'
    shutil.copyfile(TRAIN, hostile)
    _deploy(cli, hostile, name="evil")
    cli("stop", "evil")
    context = tmp_path / "context"
    written = _build(cli, "evil", "--context-only", str(context))
    assert written["context_dir"] == str(context)
    for dockerfile in context.glob("Dockerfile*"):
        instructions = [
            line.split()[0]
            for line in dockerfile.read_text(encoding="utf-8").splitlines()
            if line and not line[0].isspace() and not line.startswith("#")
        ]
        assert instructions.count("RUN") == (2 if dockerfile.name != "Dockerfile.service" else 0)
    built = _build(cli, "evil")
    labels = engine.inspect_image(built["image"])["Config"]["Labels"]
    assert labels["ai.nbdeploy.notebook"] == str(hostile).replace("\n", "?")
    checked = engine.create_container(
        built["image"], command=["sh", "-c", "test -e /pwned || test -e /home/nbdeploy/pwned"]
    )
    engine.start(checked["Id"])
    assert engine.wait(checked["Id"])["StatusCode"] != 0  # no pwned file was made
    engine.remove_container(checked["Id"], force=True)


@pytest.mark.integration
def test_context_only_builds_elsewhere(
    engine: Any, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """The portable context (one multi-stage Dockerfile) builds with plain `docker build`."""
    _deploy(cli, TRAIN)
    cli("stop", "predict")
    context = tmp_path / "context"
    _build(cli, "predict", "--context-only", str(context))
    assert {p.name for p in context.iterdir()} >= {
        "Dockerfile",
        "requirements.lock",
        "wheels",
        "models",
        "bento",
    }
    from nbdeploy.image import engine as engine_api

    record = engine_api.build(
        engine,
        engine_api.context_tar(
            context, "Dockerfile", ["requirements.lock", "wheels", "models", "bento"]
        ),
        "nbdeploy-test/portable:latest",
    )
    assert record.image_id
    labels = engine.inspect_image("nbdeploy-test/portable:latest")["Config"]["Labels"]
    assert labels["ai.nbdeploy.deployment"] == "predict"


@pytest.mark.integration
def test_engine_errors_are_clear(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    _deploy(cli, TRAIN)
    cli("stop", "predict")
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    result = _cli_with(cli, env, "image", "build", "predict", "--offline")
    assert result.code == 2, result
    assert "no Docker engine is reachable" in result.err
    assert "DOCKER_HOST" in result.err and "--context-only" in result.err
    assert "Traceback" not in result.err
    bad_base = cli("image", "build", "predict", "--base-image", "bad image;rm -rf /")
    assert bad_base.code == 2 and "not an image reference" in bad_base.err
    unknown = cli("image", "build", "predict:7")
    assert unknown.code == 2 and "no version" in unknown.err


def _cli_with(cli: Callable[..., CliResult], env: dict[str, str], *args: str) -> CliResult:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return cli(*args)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.integration
def test_offline_build_without_base_image_and_push_errors(
    engine: Any, cli: Callable[..., CliResult]
) -> None:
    _deploy(cli, TRAIN)
    cli("stop", "predict")
    missing = cli(
        "image",
        "build",
        "predict",
        "--offline",
        "--base-image",
        "nbdeploy-test/absent:1",
        timeout=300,
    )
    assert missing.code == 2, missing
    assert "nbdeploy-test/absent:1 is not in the engine" in missing.err
    assert "--base-image" in missing.err
    push = cli(
        "image",
        "build",
        "predict",
        "--offline",
        "--base-image",
        BASE_IMAGE,
        "--push",
        "127.0.0.1:9",
        timeout=900,
    )
    assert push.code == 2, push
    assert "the push of 127.0.0.1:9/nbdeploy/predict:v1 failed" in push.err
    assert "Traceback" not in push.err


OFFLINE_PATH = "--offline --base-image IMAGE"
MAKE_BASE = (
    "mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "
    "base.tar && docker import base.tar nbdeploy-base:bookworm"
)


def _default_base_unreachable(engine: Any) -> bool:
    """The default base (python:X.Y-slim) is not in the engine and Docker Hub does not
    resolve here: building with it must fail on the pull, not on the image."""
    import socket

    from docker.errors import ImageNotFound

    try:
        engine.inspect_image(f"python:{sys.version_info.major}.{sys.version_info.minor}-slim")
        return False
    except ImageNotFound:
        pass
    try:
        socket.getaddrinfo("registry-1.docker.io", 443)
        return False
    except OSError:
        return True


@pytest.mark.integration
def test_base_image_that_cannot_be_pulled_names_the_offline_path(
    engine: Any, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base image the engine lacks is pulled; when the pull fails the error says so, with
    the engine's reason shortened, and names the offline path (never the venv module)."""
    _deploy(cli, TRAIN)
    cli("stop", "predict")
    unreachable = "127.0.0.1:9/none:1"  # a registry that refuses at once
    failed = cli("image", "build", "predict", "--base-image", unreachable, timeout=300)
    assert failed.code == 2, failed
    assert (
        f"the base image {unreachable} is not in the engine and could not be pulled "
        "(no registry reachable at 127.0.0.1:9, connection refused)"
    ) in failed.err
    assert OFFLINE_PATH in failed.err and MAKE_BASE in failed.err
    assert "venv module" not in failed.err and "Traceback" not in failed.err

    monkeypatch.delenv("NBDEPLOY_BASE_IMAGE", raising=False)
    if not _default_base_unreachable(engine):
        return  # a registry answers (or the image is here): the default base builds
    default = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
    failed = cli("image", "build", "predict", timeout=300)
    assert failed.code == 2, failed
    assert f"the base image {default} is not in the engine and could not be pulled" in failed.err
    assert "DNS: registry-1.docker.io does not resolve" in failed.err
    assert OFFLINE_PATH in failed.err and MAKE_BASE in failed.err
    assert "venv module" not in failed.err and f"e.g. {default}" not in failed.err


@pytest.mark.integration
def test_base_image_without_python_is_named_with_another_base(
    engine: Any, cli: Callable[..., CliResult]
) -> None:
    """An image in the engine without python3: the venv error, whose hint suggests other
    images, never the one that failed."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("etc/hostname")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"none\n"))
    no_python = "nbdeploy-test/no-python:1"
    engine.import_image_from_data(buffer.getvalue(), repository="nbdeploy-test/no-python", tag="1")
    try:
        _deploy(cli, TRAIN)
        cli("stop", "predict")
        failed = cli(
            "image", "build", "predict", "--offline", "--base-image", no_python, timeout=300
        )
    finally:
        engine.remove_image(no_python, force=True)
    assert failed.code == 2, failed
    assert (
        f"the base image {no_python} has no python3 with the venv module (no python3 on its PATH)"
        in failed.err
    )
    hint = failed.err.split("hint:", 1)[1]
    assert no_python not in hint
    assert "--base-image" in hint and MAKE_BASE in hint
    assert "could not be pulled" not in failed.err and "Traceback" not in failed.err


def test_base_image_hints_never_suggest_the_failed_image() -> None:
    """The hints name other images than the one that failed; the engine's pull failures are
    shortened to their cause."""
    from nbdeploy.image.build import _other_base_hint, make_base_commands
    from nbdeploy.image.engine import pull_failure

    here = f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
    assert here not in _other_base_hint(here)
    assert f"e.g. {here}" in _other_base_hint("nbdeploy-test/no-python:1")
    commands, name = make_base_commands()
    assert name not in _other_base_hint(name)
    assert commands.startswith("mmdebstrap --variant=minbase")
    hub = 'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io'
    assert (
        pull_failure(f"{hub} on 10.0.0.1:53: no such host")
        == "DNS: registry-1.docker.io does not resolve, no such host"
    )
    assert pull_failure('Get "https://r.example/v2/": dial tcp 10.0.0.2:443: i/o timeout') == (
        "timeout reaching r.example, i/o timeout"
    )
    assert (
        pull_failure(
            'Get "https://r.example/v2/": tls: failed to verify certificate: x509: certificate '
            "signed by unknown authority"
        )
        == "TLS failed with r.example, certificate signed by unknown authority"
    )


def test_lock_is_the_installed_closure_and_wheels_install(tmp_path: Path) -> None:
    """The lock follows requirements of requirements at installed versions; packed wheels
    are valid wheels that pip installs offline into a fresh venv."""
    import importlib.metadata as metadata

    from nbdeploy.image import wheelhouse

    locked = wheelhouse.lock(["cloudpickle", "PyYAML"])
    assert [entry.line for entry in locked.entries] == [
        f"cloudpickle=={metadata.version('cloudpickle')}",
        f"PyYAML=={metadata.version('PyYAML')}",
    ]
    closure = {entry.name.lower() for entry in wheelhouse.lock(["httpx"]).entries}
    assert {"httpx", "httpcore", "anyio", "certifi", "idna", "h11"} <= closure
    assert wheelhouse.lock(["PyYAML"]).digest == wheelhouse.lock(["pyyaml"]).digest
    with pytest.raises(wheelhouse.WheelhouseError, match="not installed"):
        wheelhouse.lock(["surely-not-installed-nbdeploy"])
    with pytest.raises(wheelhouse.WheelhouseError, match="requires"):
        wheelhouse.lock(["cloudpickle<0.1"])

    wheels = wheelhouse.assemble(locked, tmp_path / "wheels", offline=True)
    again = wheelhouse.assemble(locked, tmp_path / "again", offline=True)
    assert [w.read_bytes() for w in wheels] == [w.read_bytes() for w in again]
    with zipfile.ZipFile(next(w for w in wheels if w.name.startswith("PyYAML"))) as archive:
        names = archive.namelist()
        assert any(name.endswith(".dist-info/RECORD") for name in names)
        assert not any("__pycache__" in name for name in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--quiet",
            "--find-links",
            str(tmp_path / "wheels"),
            "cloudpickle",
            "PyYAML",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    answer = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import yaml, cloudpickle; print(yaml.safe_dump({'a': 1}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert answer.stdout.strip() == "a: 1"


def test_dockerfile_strings_are_quoted() -> None:
    from nbdeploy.image.context import ImageDefinitionError, check_reference, dockerfile_string

    assert dockerfile_string('a"b$c\\d') == '"a\\"b\\$c\\\\d"'
    assert "\n" not in dockerfile_string("x\nRUN y")
    for bad in ("python:3.11 AS x", "a\nRUN b", "UPPER/case", "x;y", ""):
        with pytest.raises(ImageDefinitionError):
            check_reference(bad, "--base-image")
    assert check_reference("registry.example.com:5000/team/model:v3", "--tag")


@pytest.mark.integration
def test_deploy_magic_builds_the_image_with_a_progress_bar(
    engine: Any, home: Path, tmp_path: Path, python_kernel: str
) -> None:
    """``%deploy predict --image`` in a live kernel: the deploy, then the image build with
    its steps as an ipywidgets progress bar that ends in success."""
    from jupyter_client.manager import start_new_kernel
    from test_magics import WIDGET_VIEW, run_in_kernel

    env = dict(os.environ, NBDEPLOY_HOME=str(home))
    km, kc = start_new_kernel(kernel_name=python_kernel, env=env, cwd=str(tmp_path))
    try:
        run_in_kernel(
            kc,
            "%load_ext nbdeploy\n"
            "import numpy as np\nfrom sklearn.linear_model import LogisticRegression\n"
            "X = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]])\n"
            "model = LogisticRegression().fit(X, [0, 1, 0, 1])\n"
            "def predict(rows: list[list[float]]) -> list[int]:\n"
            "    return model.predict(np.asarray(rows)).tolist()\n",
        )
        displays: list[Any] = []
        output = run_in_kernel(
            kc,
            f"%deploy predict --no-mlflow --image --offline --base-image {BASE_IMAGE}",
            timeout=900,
            displays=displays,
        )
        assert "✓ image nbdeploy/predict:v1:" in output, output
        assert sum(WIDGET_VIEW in data for data in displays) >= 2  # deploy bar, image bar
        state = run_in_kernel(
            kc,
            "import warnings\nwarnings.simplefilter('ignore')\nfrom ipywidgets import Widget\n"
            "bars = [w for w in Widget.widgets.values() if type(w).__name__ == 'IntProgress']\n"
            "print(bars[-1].value == bars[-1].max, bars[-1].max > 5, bars[-1].bar_style)",
        )
        assert state.split() == ["True", "True", "success"], state
        labels = engine.inspect_image("nbdeploy/predict:v1")["Config"]["Labels"]
        assert labels["ai.nbdeploy.deployment"] == "predict"
        run_in_kernel(kc, "%deploy stop predict")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _pod_containers(cli: Callable[..., CliResult], *args: str) -> list[dict[str, Any]]:
    import yaml

    written = cli("k8s", *args)
    assert written.code == 0, written
    [job] = list(yaml.safe_load_all(written.out))
    spec = job["spec"]["jobTemplate"]["spec"] if job["kind"] == "CronJob" else job["spec"]
    containers: list[dict[str, Any]] = spec["template"]["spec"]["containers"]
    return containers


def _run_pod(engine: Any, container: dict[str, Any], extra_env: dict[str, str]) -> tuple[int, str]:
    """What the kubelet would run: the Job's command, args, working directory and env, in
    the Job's image (no network, the image's own user)."""
    env = {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
    created = engine.create_container(
        container["image"],
        command=container["args"],
        entrypoint=container["command"],
        working_dir=container["workingDir"],
        environment={**env, **extra_env},
        host_config=engine.create_host_config(network_mode="none"),
    )
    engine.start(created["Id"])
    status = engine.wait(created["Id"], timeout=600)["StatusCode"]
    output = engine.logs(created["Id"]).decode()
    engine.remove_container(created["Id"], force=True)
    return status, output


@pytest.mark.integration
def test_pipeline_image_runs_the_jobs_that_nbdeploy_k8s_writes(
    engine: Any, cli: Callable[..., CliResult]
) -> None:
    """`nbdeploy image build --pipeline` makes the image the Job of `nbdeploy k8s
    --pipeline` names; the Job's own command runs the pipeline in it, offline, as the
    image's non-root user; a sweep's pod runs the combination of its completion index."""
    pipeline = ROOT / "example_notebooks" / "pipeline.yaml"
    built = _build(cli, f"--pipeline={pipeline}")
    image = built["image"]
    assert image == "nbdeploy/pipeline-example-notebooks:latest"
    config = engine.inspect_image(image)["Config"]
    assert config["User"] == "10001:10001"
    assert config["Labels"]["ai.nbdeploy.pipeline"] == str(pipeline)

    [container] = _pod_containers(cli, "--pipeline", str(pipeline))
    assert container["image"] == image
    status, output = _run_pod(engine, container, {})
    assert status == 0, output
    assert "step prepare: succeeded" in output and "step train: succeeded" in output

    train = ROOT / "example_notebooks" / "train.ipynb"
    [container] = _pod_containers(
        cli, "--pipeline", str(train), "--sweep", "n_estimators=5,7", "--image", image
    )
    status, output = _run_pod(engine, container, {"JOB_COMPLETION_INDEX": "1"})
    assert status == 0, output
    assert "n_estimators=7" in output and "n_estimators=5" not in output, output
