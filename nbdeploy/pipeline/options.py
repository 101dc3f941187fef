"""The options of ``nbdeploy run``, defined once for the CLI and ``%deploy run`` (and the
``-p NAME VALUE`` option that ``nbdeploy deploy`` shares)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nbdeploy.errors import ParameterError


def add_parameter_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter (converted to its declared type); repeatable",
    )


def add_run_arguments(run: argparse.ArgumentParser, notebook_optional: bool = False) -> None:
    """The options of ``nbdeploy run``, shared with ``%deploy run``."""
    if notebook_optional:
        run.add_argument(
            "notebook", nargs="?", help="a .ipynb or pipeline.yaml (default: this notebook)"
        )
    else:
        run.add_argument("notebook", help="a .ipynb file, or a pipeline.yaml")
    add_parameter_option(run)
    run.add_argument(
        "-f", "--parameters-file", metavar="FILE", help="YAML file of parameter values"
    )
    run.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="run every combination of these values (JSON list form: NAME=[...]); repeatable",
    )
    run.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="kernels at once (default 1; with --executor dask: one per worker)",
    )
    run.add_argument(
        "--executor",
        choices=("local", "dask"),
        default=None,
        help="where sweeps and pipeline steps run: here (local, the default) or on Dask",
    )
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler, e.g. tcp://HOST:8786 (default: $NBDEPLOY_DASK_SCHEDULER, "
        "else a cluster on this machine); implies --executor dask",
    )
    run.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="PATH",
        help="with Dask: a file or folder that travels with each run (default: the "
        "notebook's folder); repeatable",
    )
    run.add_argument("--output-dir", metavar="DIR", help="where output notebooks are written")
    run.add_argument("--kernel", metavar="NAME", help="kernel to use (default: the notebook's)")
    run.add_argument("--timeout", type=float, metavar="SECONDS", help="limit for each notebook run")
    run.add_argument("--log-output", action="store_true", help="stream cell output live")
    run.add_argument("--no-mlflow", action="store_true", help="do not record the run in MLflow")
    run.add_argument("--force", action="store_true", help="pipelines: re-run cached steps")
    run.add_argument("--junit", metavar="FILE", help="write a JUnit XML report (for CI)")
    run.add_argument("--json", action="store_true", help="print the result as one JSON object")


def load_parameters_file(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParameterError(f"parameters file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ParameterError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParameterError(
            f"{path} must map parameter names to values, got {type(data).__name__}"
        )
    return data


def run_request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``api.run`` that ``nbdeploy run`` / ``%deploy run`` options
    give; checks the option values."""
    if args.parallel is not None and args.parallel < 1:
        raise ParameterError("--parallel must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise ParameterError("--timeout must be a positive number of seconds")
    return {
        "parameters": load_parameters_file(args.parameters_file) if args.parameters_file else None,
        "text_parameters": {name: value for name, value in args.parameter},
        "sweep": args.sweep,
        "parallel": args.parallel,
        "output_dir": args.output_dir,
        "kernel": args.kernel,
        "timeout": args.timeout,
        "mlflow": not args.no_mlflow,
        "force": args.force,
        "executor": args.executor,
        "scheduler": args.scheduler,
        "inputs": args.input,
    }
