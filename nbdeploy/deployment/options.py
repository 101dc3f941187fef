"""The deploy options, defined once for every face: the ``%deploy`` magic, ``nbdeploy
deploy`` and ``nbdeploy.deploy(...)`` take the same flags with the same defaults and help.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

LOOPBACK = "127.0.0.1"
EXTRA_COLUMNS = ("refuse", "drop")


@dataclass
class DeployOptions:
    """How a version is packaged and served."""

    name: str | None = None  # deployment name (default: the function's or variable's)
    host: str = LOOPBACK  # other addresses need NBDEPLOY_ALLOW_REMOTE=1
    port: int | None = None  # default: a free port, kept for the deployment's life
    workers: int = 1
    batch: bool | None = None  # None: on when each request row gets one result
    reference: str | None = None  # variable holding the training inputs
    requirements: list[str] = field(default_factory=list)  # extra PEP 508 requirements
    extra_columns: str = "refuse"  # records with unknown columns: refuse (400) or drop
    mlflow: bool = True  # register the version in the MLflow model registry

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DeployOptions:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in known and v is not None}
        if getattr(args, "no_mlflow", False):
            values["mlflow"] = False
        return cls(**values)

    @classmethod
    def from_keywords(cls, keywords: dict[str, Any]) -> DeployOptions:
        """From ``nbdeploy.deploy(...)`` keywords; an unknown one is a clear TypeError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise TypeError(
                f"unknown deploy option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**keywords)


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    """The deploy flags (without the target: a function, a model variable or a notebook)."""
    parser.add_argument("--name", help="deployment name (default: the function's or variable's)")
    parser.add_argument("--port", type=int, help="port (default: a free one, kept afterwards)")
    parser.add_argument(
        "--host",
        help=f"address to listen on (default {LOOPBACK}; others need NBDEPLOY_ALLOW_REMOTE=1)",
    )
    parser.add_argument("--workers", type=int, help="worker processes (default 1)")
    parser.add_argument(
        "--batch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="adaptive batching across requests (default: on when each row gets one result)",
    )
    parser.add_argument(
        "--reference",
        metavar="VAR",
        help="variable with the training inputs (a DataFrame or array): the input schema, "
        "the example call and the drift baseline",
    )
    parser.add_argument(
        "--requirements",
        nargs="+",
        metavar="REQ",
        help="extra requirements (PEP 508, e.g. 'xgboost>=2.0')",
    )
    parser.add_argument(
        "--extra-columns",
        choices=EXTRA_COLUMNS,
        help="records with columns the reference lacks: refuse them with 400 (default) or drop "
        "the columns",
    )
    parser.add_argument(
        "--no-mlflow", action="store_true", help="do not register the version in MLflow"
    )
