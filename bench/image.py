"""Image builds and the Dask executor, side by side with what a user would pick instead.

    .venv/bin/python bench/image.py [--quick] [--json]

Images (a real Docker engine: DOCKER_HOST, as `make bench` sets it through
tests/docker/engine.sh; the base image NBDEPLOY_BENCH_BASE_IMAGE, default
nbdeploy-test/python3:bookworm). The example notebook's model is deployed twice (v2 changes
only the function), then built:

- nbdeploy: ``nbdeploy image build`` offline: cold (empty wheel cache, a base image the
  engine has no cache for), then the code-only rebuild of v2;
- plain: the Dockerfile a user would write: FROM the same base, a venv, ``pip install -r
  requirements.txt`` (from the same wheels, no index: the engine here has no network), COPY
  the code; cold, then the rebuild of v2.

``bentoml containerize`` would be the first alternative, but it needs buildx, which this
engine lacks (the classic builder only): it is reported as skipped when ``docker buildx``
is absent.

Sweeps: the same grid with ``--executor dask`` (a LocalCluster of 2 workers) and with the
local ``--parallel 2`` (bench/dask_sweep.py).

Ratios: rebuild_vs_cold (goal <= 0.2), size_vs_plain (goal <= 1.0), dask_vs_local_sweep
(goal <= 1.2). ``--quick``: each build once, the small grid (about 5 minutes).
``--json``: the last line of stdout is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import BenchError, log

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "example_notebooks" / "train.ipynb"
BASE_IMAGE = os.environ.get("NBDEPLOY_BENCH_BASE_IMAGE", "nbdeploy-test/python3:bookworm")
GOALS = {"rebuild_vs_cold": 0.2, "size_vs_plain": 1.0, "dask_vs_local_sweep": 1.2}
PLAIN_DOCKERFILE = """FROM {base}
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH BENTOML_HOME=/app/bentoml
COPY wheels/ /wheels/
COPY requirements.txt /app/requirements.txt
RUN pip install --no-index --find-links /wheels -r /app/requirements.txt
COPY bentoml/ /app/bentoml/
EXPOSE 3000
CMD ["bentoml", "serve", "{bento}", "--host", "0.0.0.0", "--port", "3000"]
"""


def _nbdeploy(home: Path, *args: str, timeout: float = 900) -> str:
    env = dict(os.environ, NBDEPLOY_HOME=str(home))
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "nbdeploy"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise BenchError(f"nbdeploy {' '.join(args)} failed:\n{completed.stderr[-3000:]}")
    return completed.stdout


def _changed_function(folder: Path) -> Path:
    notebook = json.loads(TRAIN.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if "def predict" in source:
            cell["source"] = source.replace('"""Class (0 or 1)', '"""The class (0 or 1)')
    changed = folder / "train_v2.ipynb"
    changed.write_text(json.dumps(notebook), encoding="utf-8")
    return changed


def _fresh_base(api: Any) -> str:
    """The base image under a new id: nothing in the engine's cache descends from it, so
    every build on it is cold (the layers are the base's own)."""
    from nbdeploy.image import engine

    tag = f"nbdeploy-bench/base:{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "Dockerfile").write_text(
            f"FROM {BASE_IMAGE}\nLABEL ai.nbdeploy.bench={tag.split(':')[1]}\n", encoding="utf-8"
        )
        engine.build(api, engine.context_tar(Path(folder), "Dockerfile", []), tag)
    return tag


def _plain_build(api: Any, home: Path, version: int, base: str, tag: str) -> dict[str, Any]:
    """The user's Dockerfile on a context of the same wheels, requirements and code."""
    from nbdeploy.deployment.store import DeploymentStore
    from nbdeploy.image import engine
    from nbdeploy.image.context import copy_version, serving_requirements
    from nbdeploy.store import StateStore

    os.environ["NBDEPLOY_HOME"] = str(home)
    store = DeploymentStore(StateStore(home / "state.db"))
    record = store.version("predict", version)
    with tempfile.TemporaryDirectory() as folder:
        context = Path(folder)
        scratch = context / "scratch"
        copy_version(record, scratch)
        (context / "bentoml").mkdir()
        shutil.move(str(scratch / "bento"), context / "bentoml" / "bentos")
        shutil.move(str(scratch / "models"), context / "bentoml" / "models")
        shutil.copytree(home / "wheels", context / "wheels", copy_function=os.link)
        (context / "requirements.txt").write_text(
            "".join(f"{line}\n" for line in serving_requirements(record)), encoding="utf-8"
        )
        (context / "Dockerfile").write_text(
            PLAIN_DOCKERFILE.format(base=base, bento=record.bento_tag), encoding="utf-8"
        )
        started = time.monotonic()
        tar = engine.context_tar(context, "Dockerfile", ["wheels", "requirements.txt", "bentoml"])
        built = engine.build(api, tar, tag)
        seconds = time.monotonic() - started
    size = int(api.inspect_image(tag)["Size"])
    return {"seconds": round(seconds, 2), "size": size, "cached_steps": built.cached_steps}


def _nbdeploy_build(home: Path, spec: str, base: str) -> dict[str, Any]:
    started = time.monotonic()
    output = _nbdeploy(home, "image", "build", spec, "--offline", "--base-image", base, "--json")
    seconds = time.monotonic() - started
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return {
        "seconds": round(seconds, 2),
        "size": result["size"],
        "dependencies_reused": result["dependencies_reused"],
    }


def measure_images(rounds: int) -> dict[str, Any]:
    from nbdeploy.image import engine

    api = engine.client()
    if api.inspect_image(BASE_IMAGE) is None:
        raise BenchError(f"the engine has no base image {BASE_IMAGE}: run make bench")
    results: dict[str, list[float]] = {
        key: []
        for key in ("cold_s", "rebuild_s", "plain_cold_s", "plain_rebuild_s", "size", "plain_size")
    }
    with tempfile.TemporaryDirectory(prefix="nbdeploy-bench-image-") as folder:
        home = Path(folder) / "home"
        log("deploying the example notebook (v1), then v2 with only its function changed")
        _nbdeploy(home, "deploy", str(TRAIN), "--name", "predict", "--no-mlflow")
        _nbdeploy(
            home, "deploy", str(_changed_function(Path(folder))), "--name", "predict", "--no-mlflow"
        )
        _nbdeploy(home, "stop", "predict")
        for round_number in range(1, rounds + 1):
            base = _fresh_base(api)
            shutil.rmtree(home / "wheels", ignore_errors=True)
            log(f"round {round_number}: nbdeploy cold build of v1 on {base}")
            cold = _nbdeploy_build(home, "predict:1", base)
            log(f"  {cold['seconds']} s, {cold['size'] / 1e6:.0f} MB; code-only rebuild (v2)")
            rebuild = _nbdeploy_build(home, "predict:2", base)
            if not rebuild["dependencies_reused"]:
                raise BenchError("the rebuild did not reuse the dependency image")
            log(f"  {rebuild['seconds']} s; plain Dockerfile cold build of v1")
            plain = _plain_build(api, home, 1, base, f"nbdeploy-bench/plain:{round_number}")
            log(f"  {plain['seconds']} s, {plain['size'] / 1e6:.0f} MB; plain rebuild (v2)")
            plain_rebuild = _plain_build(
                api, home, 2, base, f"nbdeploy-bench/plain:{round_number}b"
            )
            log(f"  {plain_rebuild['seconds']} s")
            results["cold_s"].append(cold["seconds"])
            results["rebuild_s"].append(rebuild["seconds"])
            results["plain_cold_s"].append(plain["seconds"])
            results["plain_rebuild_s"].append(plain_rebuild["seconds"])
            results["size"].append(rebuild["size"])
            results["plain_size"].append(plain_rebuild["size"])
    best = {key: min(values) for key, values in results.items()}
    return {
        "cold_s": best["cold_s"],
        "rebuild_s": best["rebuild_s"],
        "plain_cold_s": best["plain_cold_s"],
        "plain_rebuild_s": best["plain_rebuild_s"],
        "image_mb": round(best["size"] / 1e6, 1),
        "plain_image_mb": round(best["plain_size"] / 1e6, 1),
        "rebuild_vs_cold": round(best["rebuild_s"] / best["cold_s"], 3),
        "plain_rebuild_vs_cold": round(best["plain_rebuild_s"] / best["plain_cold_s"], 3),
        "cold_vs_plain_cold": round(best["cold_s"] / best["plain_cold_s"], 3),
        "size_vs_plain": round(best["size"] / best["plain_size"], 3),
    }


def bentoml_containerize_available() -> bool:
    try:
        found = subprocess.run(
            ["docker", "buildx", "version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return found.returncode == 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="each build once, a small grid")
    parser.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"quick": args.quick}
    if not bentoml_containerize_available():
        log(
            "bentoml containerize: skipped (it needs docker buildx; this engine has only the "
            "classic builder): compared with the plain Dockerfile instead"
        )
        results["bentoml_containerize"] = "skipped: no buildx"
    results.update(measure_images(1 if args.quick else 3))
    import dask_sweep

    sweep = dask_sweep.measure(args.quick)
    results.update(sweep)
    r = results
    print(f"cold build         nbdeploy {r['cold_s']:.1f} s   plain {r['plain_cold_s']:.1f} s")
    print(
        f"code-only rebuild  nbdeploy {r['rebuild_s']:.1f} s   plain {r['plain_rebuild_s']:.1f} s"
    )
    print(f"image size         nbdeploy {r['image_mb']:.0f} MB  plain {r['plain_image_mb']:.0f} MB")
    for key, goal in GOALS.items():
        print(f"{key:<22} {r[key]:.3f}  (goal <= {goal})")
    results["goals_met"] = all(results[key] <= goal for key, goal in GOALS.items())
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        log(f"bench/image.py: {error}")
        sys.exit(1)
