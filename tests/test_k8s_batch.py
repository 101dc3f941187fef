"""Integration: batch scoring on Kubernetes (``nbdeploy k8s NAME --batch``, an Indexed Job)
and nbdeploy schedules as CronJobs (``nbdeploy k8s --schedule NAME``).

A DataFrame function is deployed once for the module (a home of its own). Manifests are
checked against Kubernetes' own schemas (kubernetes-validate, strict) and for the policies
in their fields; wrong input fails with exit 2 and writes nothing. The pod's entry
(``python -m nbdeploy.batching.pod``) runs here over the version's folder: its parts, read
together in order, equal ``nbdeploy batch``'s output for the same input. With a Docker
engine (``make test`` provides one), the version's batch image runs one pod's command with
the input bind-mounted at the claim's mount path, network none: its part equals the local
one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import VENV_BIN, CliResult, require_component
from k8s_batch_model import frame_score
from test_k8s import schema_errors

import nbdeploy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "example_notebooks" / "train.ipynb"
BASE_IMAGE = os.environ.get("NBDEPLOY_TEST_BASE_IMAGE", "nbdeploy-test/python3:bookworm")
COLORS = ["red", "green", "blue"]


def make_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(size=rows).round(4),
            "b": rng.normal(size=rows).round(4),
            "color": rng.choice(COLORS, size=rows),
        }
    )


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("k8s-batch-home")


@pytest.fixture(autouse=True)
def _use_module_home(module_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBDEPLOY_HOME", str(module_home))


@pytest.fixture(scope="module")
def version_dir(module_home: Path) -> Iterator[Path]:
    """The deployed version's folder (what the batch image holds at /home/nbdeploy/version)."""
    previous = os.environ.get("NBDEPLOY_HOME")
    os.environ["NBDEPLOY_HOME"] = str(module_home)
    reference = make_frame(300, 0)
    reference["color"] = pd.Categorical(reference["color"], categories=COLORS)
    try:
        nbdeploy.deploy(
            frame_score,
            name="scorer",
            namespace={"X": reference, "frame_score": frame_score},
            history=[],
            reference="X",
            mlflow=False,
        )
        from nbdeploy.deployment.store import DeploymentStore
        from nbdeploy.store import default_store

        yield Path(DeploymentStore(default_store()).version("scorer", 1).service_dir)
    finally:
        nbdeploy.stop("scorer")
        from nbdeploy.deployment.runtime import client, launcher

        client.shutdown(module_home)
        launcher.shutdown(module_home)
        if previous is None:
            os.environ.pop("NBDEPLOY_HOME", None)
        else:
            os.environ["NBDEPLOY_HOME"] = previous


def nbdeploy_cli(*args: str, timeout: float = 240) -> CliResult:
    completed = subprocess.run(
        [str(VENV_BIN / "nbdeploy"), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=timeout,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def pod(*args: str, env: dict[str, str] | None = None) -> CliResult:
    completed = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "nbdeploy.batching.pod", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=180,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def input_folder(folder: Path) -> Path:
    """Three Parquet files (names sorted as the rows go), one bad row in the second."""
    folder.mkdir(parents=True)
    start = 0
    for number, rows in enumerate((70, 55, 40)):
        frame = make_frame(rows, 10 + number)
        frame.insert(0, "id", [f"r{start + i}" for i in range(rows)])
        if number == 1:
            frame.loc[7, "a"] = 5000.0  # raises: this row alone goes to the errors
        frame.to_parquet(folder / f"day-{number}.parquet", index=False)
        start += rows
    return folder


def k8s_objects(result: CliResult) -> list[dict[str, Any]]:
    import yaml

    assert result.code == 0, result
    return [obj for obj in yaml.safe_load_all(result.out) if obj]


def add_schedule(name: str, command: list[str], cwd: Path, **policies: Any) -> None:
    """A schedule in the state store, as the daemon stores it (no daemon needed)."""
    from nbdeploy.schedule.spec import build_spec
    from nbdeploy.schedule.store import ScheduleStore
    from nbdeploy.store import default_store

    spec = build_spec(command=command, cwd=str(cwd), **policies)
    ScheduleStore(default_store()).put(name, spec, None)


# -- the pod, run here ---------------------------------------------------------------------
def test_pod_parts_read_in_order_equal_nbdeploy_batch(version_dir: Path, tmp_path: Path) -> None:
    source = input_folder(tmp_path / "data" / "in")
    whole = tmp_path / "whole.parquet"
    batch = nbdeploy_cli("batch", "scorer", str(source), "--output", str(whole), "--no-mlflow")
    assert batch.code == 0, batch
    expected = pd.read_parquet(whole)
    assert len(expected) == 164

    out = tmp_path / "data" / "scored.parquet"
    for part in range(3):
        ran = pod(
            "--version-dir", str(version_dir), "--input", str(source), "--output", str(out),
            "--part", "env", "--partitions", "3", "--root", str(tmp_path / "data"),
            "--chunk-rows", "16", "--max-error-share", "0.05",
            env={"JOB_COMPLETION_INDEX": str(part)},
        )  # fmt: skip
        assert ran.code == 0, ran
        assert ran.json["files"] == [f"in/day-{part}.parquet"]
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"_errors-{k:05d}.jsonl" for k in range(3)] + [
        f"part-{k:05d}.parquet" for k in range(3)
    ]
    parts = pd.concat([pd.read_parquet(out / f"part-{k:05d}.parquet") for k in range(3)])
    pd.testing.assert_frame_equal(parts.reset_index(drop=True), expected)
    together = pd.read_parquet(out)  # the folder read whole, as a dataset
    assert together["id"].tolist() == expected["id"].tolist()
    [error] = [json.loads(line) for line in (out / "_errors-00001.jsonl").read_text().splitlines()]
    assert error["file"] == "in/day-1.parquet" and error["row"] == 7
    assert "a is above 1000" in error["reason"]
    assert (out / "_errors-00000.jsonl").read_text() == ""

    # A single Parquet file: its row groups, in contiguous ranges.
    single = tmp_path / "single.parquet"
    frame = make_frame(100, 3)
    frame.insert(0, "id", range(100))
    frame.to_parquet(single, index=False, row_group_size=25)
    whole_single = tmp_path / "whole-single.parquet"
    scored = nbdeploy_cli("batch", "scorer", str(single), "-o", str(whole_single), "--no-mlflow")
    assert scored.code == 0, scored
    out_single = tmp_path / "single-out.csv"
    for part in range(3):
        ran = pod(
            "--version-dir", str(version_dir), "--input", str(single),
            "--output", str(out_single), "--part", str(part), "--partitions", "3",
        )  # fmt: skip
        assert ran.code == 0, ran
    rows = [pd.read_csv(out_single / f"part-{k:05d}.csv") for k in range(3)]
    assert [len(r) for r in rows] == [25, 25, 50]  # 4 row groups in 3 ranges
    expected_single = pd.read_parquet(whole_single)
    assert pd.concat(rows)["prediction"].tolist() == pytest.approx(
        expected_single["prediction"].tolist()
    )

    # Wrong input: exit 2 with what and where, nothing written.
    refused = pod(
        "--version-dir", str(version_dir), "--input", str(source), "--output",
        str(tmp_path / "x.parquet"), "--part", "env", "--partitions", "3",
    )  # fmt: skip
    assert refused.code == 2 and "JOB_COMPLETION_INDEX is not set" in refused.err
    assert not (tmp_path / "x.parquet").exists()
    outside = pod(
        "--version-dir", str(version_dir), "--input", str(single), "--output",
        str(tmp_path / "y.parquet"), "--part", "0", "--root", str(tmp_path / "data"),
    )  # fmt: skip
    assert outside.code == 2 and "is outside" in outside.err


# -- the manifests -------------------------------------------------------------------------
def test_indexed_job_is_valid_and_carries_the_partitions(version_dir: Path, tmp_path: Path) -> None:
    [job] = k8s_objects(
        nbdeploy_cli(
            "k8s", "scorer", "--batch", "in/", "--output", "/data/out/scored.parquet",
            "--claim", "scoring-data", "--partitions", "3", "--parallel", "2",
            "--retries", "2", "--namespace", "ml", "--cpu", "2", "--memory", "3Gi",
        )
    )  # fmt: skip
    assert schema_errors([job]) == []
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "ml"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 2)
    assert spec["backoffLimitPerIndex"] == 2
    pod_spec = spec["template"]["spec"]
    [container] = pod_spec["containers"]
    assert container["image"] == "nbdeploy/scorer:v1-batch"
    assert container["command"] == ["python", "-m", "nbdeploy.batching.pod"]
    arguments = container["args"]
    assert arguments[arguments.index("--part") + 1] == "env"
    assert arguments[arguments.index("--input") + 1] == "/data/in"
    assert arguments[arguments.index("--output") + 1] == "/data/out/scored.parquet"
    assert arguments[arguments.index("--partitions") + 1] == "3"
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "scoring-data"}} in pod_spec[
        "volumes"
    ]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "3Gi"}
    assert pod_spec["securityContext"]["runAsUser"] == 10001
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec["automountServiceAccountToken"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}

    # A $ in a path stays one argument, doubled for Kubernetes' $(VAR) expansion.
    [dollar] = k8s_objects(
        nbdeploy_cli("k8s", "scorer", "--batch", "in/$(HOME)", "--output", "o", "--claim", "c")
    )
    assert "/data/in/$$(HOME)" in dollar["spec"]["template"]["spec"]["containers"][0]["args"]

    # With a cron expression, a CronJob around the same Job.
    [cron] = k8s_objects(
        nbdeploy_cli(
            "k8s", "scorer", "--batch", "in/", "--output", "out", "--claim", "c",
            "--schedule", "0 3 * * *", "--image", "registry.example.com/scorer:b1",
        )
    )  # fmt: skip
    assert schema_errors([cron]) == []
    assert cron["kind"] == "CronJob" and cron["spec"]["schedule"] == "0 3 * * *"
    template = cron["spec"]["jobTemplate"]["spec"]
    assert template["completionMode"] == "Indexed"
    assert (
        template["template"]["spec"]["containers"][0]["image"] == "registry.example.com/scorer:b1"
    )


def test_schedules_become_cronjobs_with_their_policies(version_dir: Path, tmp_path: Path) -> None:
    data = input_folder(tmp_path / "in")
    add_schedule(
        "nightly-score",
        ["batch", "scorer", str(data), "--output", str(tmp_path / "out" / "scored.parquet")],
        tmp_path,
        cron="30 2 * * *",
        tz="Europe/Berlin",
        overlap="replace",
        catch_up="none",
        retries=3,
    )
    result = nbdeploy_cli("k8s", "--schedule", "nightly-score", "--claim", "c", "--partitions", "3")
    [cronjob] = k8s_objects(result)
    assert schema_errors([cronjob]) == []
    spec = cronjob["spec"]
    assert cronjob["metadata"]["name"] == "nightly-score"
    assert (spec["schedule"], spec["timeZone"]) == ("30 2 * * *", "Europe/Berlin")
    assert spec["concurrencyPolicy"] == "Replace"
    assert spec["startingDeadlineSeconds"] == 60
    job = spec["jobTemplate"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == 3
    assert job["backoffLimitPerIndex"] == 3
    arguments = job["template"]["spec"]["containers"][0]["args"]
    assert arguments[arguments.index("--input") + 1] == "/data/in"
    assert arguments[arguments.index("--output") + 1] == "/data/out/scored.parquet"

    add_schedule(
        "weekly-train",
        ["run", str(TRAIN), "-p", "n_estimators", "5"],
        tmp_path,
        cron="0 4 * * 1",
        tz="UTC",
        overlap="queue",
        catch_up="all",
        retries=1,
    )
    result = nbdeploy_cli("k8s", "--schedule", "weekly-train", "--retries", "4")
    [cronjob] = k8s_objects(result)
    assert schema_errors([cronjob]) == []
    spec = cronjob["spec"]
    assert (spec["schedule"], spec["timeZone"]) == ("0 4 * * 1", "UTC")
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == 86400
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 4  # --retries wins over the schedule's
    args = job["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["run", "/home/nbdeploy/work/train.ipynb"]
    assert args[args.index("-p") : args.index("-p") + 3] == ["-p", "n_estimators", "5"]
    assert "Kubernetes cannot queue" in result.err
    assert "mapped to latest" in result.err

    # The pipeline's own cron expression still makes its CronJob.
    [own] = k8s_objects(nbdeploy_cli("k8s", "--pipeline", str(TRAIN), "--schedule", "0 5 * * *"))
    assert own["kind"] == "CronJob" and own["spec"]["schedule"] == "0 5 * * *"


# -- errors: exit 2, a clear message, nothing written ------------------------------------------
def test_wrong_input_is_refused_and_nothing_is_written(version_dir: Path, tmp_path: Path) -> None:
    add_schedule("fast", ["run", str(TRAIN)], tmp_path, cron="*/10 * * * * *")
    add_schedule("on-drift", ["run", str(TRAIN)], tmp_path, on="drift:scorer")
    out = tmp_path / "manifests"
    batch = ("--claim", "c", "--out", str(out))
    cases = [
        (("--schedule", "nosuch"), "no nbdeploy schedule of that name"),
        (("--schedule", "fast"), "has 6 fields (seconds first)"),
        (("--schedule", "on-drift"), "fires on --on drift:scorer only"),
        (("scorer", "--batch", "../etc", "--output", "o", *batch), "'..' would leave the claim"),
        (("scorer", "--batch", "/etc/x", "--output", "o", *batch), "outside the claim"),
        (("scorer", "--batch", "in", "--output", "o"), "--batch needs --claim PVC"),
        (("nosuch", "--batch", "in", "--output", "o", *batch), "nosuch"),
        (("scorer", "--batch", "in", "--output", "o", "--version", "9", *batch), "no version 9"),
        (("scorer", "--batch", "a.csv", "--output", "o", "--partitions", "2", *batch), "one CSV"),
        (("scorer", "--batch", "in", "--output", "o.txt", *batch), "--output o.txt"),
        (("--pipeline", str(TRAIN), "--schedule", "fast"), "leave out --pipeline"),
    ]
    for arguments, said in cases:
        result = nbdeploy_cli("k8s", *arguments)
        assert result.code == 2, (arguments, result)
        assert said in result.err, (arguments, result.err)
        assert not out.exists(), arguments


# -- the batch image, with a Docker engine ---------------------------------------------------
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


def test_batch_image_runs_a_pod_as_the_job_says(
    engine: Any, version_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "claim"
    source = input_folder(data / "in")
    local = tmp_path / "local.parquet"
    ran = pod(
        "--version-dir", str(version_dir), "--input", str(source), "--output", str(local),
        "--part", "2", "--partitions", "3",
    )  # fmt: skip
    assert ran.code == 0, ran

    built_tags: list[str] = []
    try:
        version_image = nbdeploy_cli(
            "image", "build", "scorer", "--offline", "--base-image", BASE_IMAGE, "--json",
            timeout=900,
        )  # fmt: skip
        assert version_image.code == 0, version_image
        built_tags.append(version_image.json["image"])
        if not version_image.json["dependencies_reused"]:  # ours alone: no other test's cache
            built_tags.append(version_image.json["dependencies_image"])
        built_tags.append("nbdeploy/scorer:v1-batch")
        built = nbdeploy_cli(
            "image", "build", "scorer", "--batch", "--offline", "--json", timeout=900
        )
        assert built.code == 0, built
        assert built.json["image"] == "nbdeploy/scorer:v1-batch"
        config = engine.inspect_image("nbdeploy/scorer:v1-batch")["Config"]
        assert config["User"] == "10001:10001"
        assert "NBDEPLOY_VERSION_DIR=/home/nbdeploy/version" in config["Env"]

        [job] = k8s_objects(
            nbdeploy_cli(
                "k8s", "scorer", "--batch", "in", "--output", "out.parquet", "--claim", "c",
                "--partitions", "3",
            )
        )  # fmt: skip
        [container] = job["spec"]["template"]["spec"]["containers"]
        os.chmod(data, 0o777)  # the pod's user (10001) writes the parts
        created = engine.create_container(
            container["image"],
            entrypoint=container["command"],
            command=[a.replace("$$", "$") for a in container["args"]],
            environment={"JOB_COMPLETION_INDEX": "2", "PYTHONUNBUFFERED": "1"},
            host_config=engine.create_host_config(
                network_mode="none", binds={str(data): {"bind": "/data", "mode": "rw"}}
            ),
        )
        try:
            engine.start(created["Id"])
            status = engine.wait(created["Id"], timeout=300)["StatusCode"]
            output = engine.logs(created["Id"]).decode()
        finally:
            engine.remove_container(created["Id"], force=True)
        assert status == 0, output
        in_image = pd.read_parquet(data / "out.parquet" / "part-00002.parquet")
        here = pd.read_parquet(local / "part-00002.parquet")
        pd.testing.assert_frame_equal(in_image, here)
        assert len(in_image) == 40
        assert (data / "out.parquet" / "_errors-00002.jsonl").read_text() == ""
        assert sorted(p.name for p in (data / "out.parquet").iterdir()) == [
            "_errors-00002.jsonl",
            "part-00002.parquet",
        ]
    finally:
        for tag in reversed(built_tags):
            with contextlib.suppress(Exception):
                engine.remove_image(tag, force=True)
