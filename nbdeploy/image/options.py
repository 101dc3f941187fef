"""Command-line arguments of ``nbdeploy image build|run`` (light: no docker import)."""

from __future__ import annotations

import argparse
from typing import Any


def add_image_commands(commands: Any) -> None:
    """``nbdeploy image build`` and ``nbdeploy image run`` on the CLI's subparsers."""
    image = commands.add_parser(
        "image",
        help="build a version's container image, or run it on 127.0.0.1",
        description="Container images of deployed versions, built with the Docker Engine "
        "(DOCKER_HOST respected; the classic builder, no buildx).",
    )
    verbs = image.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    build = verbs.add_parser(
        "build",
        help="build the image of NAME[:VERSION] (default: the live version)",
        description="Build the image of a version: the same code, artifacts and pinned "
        "requirements as the local service, served on port 3000 by a non-root user.",
    )
    build.add_argument("spec", metavar="NAME[:VERSION]", nargs="?")
    build.add_argument(
        "--pipeline",
        metavar="NOTEBOOK_OR_YAML",
        help="instead: the image a pipeline's Kubernetes Job runs in (nbdeploy, the "
        "notebooks' packages and their folder; default tag nbdeploy/pipeline-NAME:latest)",
    )
    build.add_argument(
        "--batch",
        action="store_true",
        help="instead: the batch image of the version, for nbdeploy k8s NAME --batch (its "
        "image plus nbdeploy and pyarrow, offline; tag nbdeploy/NAME:vN-batch)",
    )
    build.add_argument("--tag", help="image tag (default: nbdeploy/NAME:vN)")
    build.add_argument(
        "--base-image",
        metavar="IMAGE",
        help="any image with python3 and venv (default: python:X.Y-slim of this Python, "
        "or NBDEPLOY_BASE_IMAGE); pulled when the engine lacks it",
    )
    build.add_argument(
        "--offline",
        action="store_true",
        help="download nothing: wheels only from this environment and the cache, the base "
        'image only from the engine (builds always run with network "none"). Without a '
        "registry, make a base image: mmdebstrap --variant=minbase "
        "--include=python3,python3-venv,ca-certificates bookworm base.tar && docker import "
        "base.tar nbdeploy-base:bookworm; then --offline --base-image nbdeploy-base:bookworm",
    )
    build.add_argument("--push", metavar="REGISTRY", help="tag and push to this registry")
    build.add_argument(
        "--context-only",
        metavar="DIR",
        help="write the Dockerfile and build context into DIR instead of building",
    )
    build.add_argument("--json", action="store_true", help="last line: one JSON object")
    run = verbs.add_parser(
        "run",
        help="run the image of NAME[:VERSION] on 127.0.0.1 (status, stop and logs as usual)",
    )
    run.add_argument("spec", metavar="NAME[:VERSION]")
    run.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    run.add_argument("--image", help="the image to run (default: nbdeploy/NAME:vN)")
    run.add_argument("--json", action="store_true")


def image_build_arguments(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "pipeline": args.pipeline,
        "batch": args.batch,
        "tag": args.tag,
        "base_image": args.base_image,
        "offline": args.offline,
        "push": args.push,
        "context_only": args.context_only,
    }
