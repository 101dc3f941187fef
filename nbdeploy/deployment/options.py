"""The deploy options, defined once for every face: the ``%deploy`` magic, ``nbdeploy
deploy`` and ``nbdeploy.deploy(...)`` take the same flags with the same defaults and help.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Any

LOOPBACK = "127.0.0.1"
EXTRA_COLUMNS = ("refuse", "drop")
STRATEGIES = ("blue-green", "recreate", "canary", "ab", "shadow")
DEFAULT_KEEP_WARM_SECONDS = 600.0
DEFAULT_CANARY_STEPS = (10, 25, 50, 100)
DEFAULT_INTERVAL_SECONDS = 30.0
REDACT_FIELD_MAX = 200  # characters of a --redact key


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
    strategy: str = "blue-green"  # how the new version takes over (see STRATEGIES)
    keep_warm: float = DEFAULT_KEEP_WARM_SECONDS  # the previous version, for rollback
    steps: list[float] | None = None  # canary: percentages of traffic, in order
    weight: float | None = None  # canary: the first step's percentage
    interval: float = DEFAULT_INTERVAL_SECONDS  # canary: seconds between steps
    wait: bool = False  # canary: return when it is promoted or rolled back
    sticky: str | None = None  # A/B: "header:NAME" or "field:NAME"
    auth: str | None = None  # "key": the router needs an API key; "none"; None: as before
    log_sample: float = 1.0  # the share of requests the request log records (0 < x <= 1)
    redact: list[str] = field(default_factory=list)  # request keys never stored in the log
    replace: bool = False  # take over a name that another notebook deployed
    from_files: bool = False  # local modules as on disk, even when the kernel runs older code

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
    parser.add_argument(
        "--from-files",
        action="store_true",
        default=None,
        help="snapshot local modules as their files are now, even when one changed since the "
        "kernel imported it (default: refused, the version would not run what the kernel runs)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        default=None,
        help="take over the name when another notebook deployed it",
    )
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
    parser.add_argument(
        "--auth",
        choices=("key", "none"),
        help="key: the router answers only requests with Authorization: Bearer KEY (the "
        "key is shown once; nbdeploy key NAME prints it); none: no key. Default: as the "
        "deployment was; a --host other than loopback always needs a key",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="blue-green (default): start the new version beside the live one, check it, "
        "switch all traffic at once, keep the old one warm for rollback; recreate: stop the "
        "old version first (a moment without service); canary: a growing share while it "
        "answers as well as the live one; ab: split traffic and compare outcomes; shadow: "
        "mirror requests to it, return only the live answers",
    )
    parser.add_argument(
        "--steps",
        type=percentages,
        metavar="P,P,...",
        help="canary: the share of traffic at each step, in percent (default "
        + ",".join(map(str, DEFAULT_CANARY_STEPS))
        + ")",
    )
    parser.add_argument(
        "--weight",
        type=float,
        metavar="P",
        help="the new version's share in percent: canary's first step, A/B (default 50), "
        "shadow (the share of requests mirrored, default 100)",
    )
    parser.add_argument(
        "--sticky",
        metavar="header:NAME|field:NAME",
        help="A/B: the same key (a header, or a field of the JSON body) always reaches the "
        "same version",
    )
    parser.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help=f"canary: seconds between steps, each one analysed (default "
        f"{DEFAULT_INTERVAL_SECONDS:g})",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        default=None,
        help="canary: return only when it is promoted or rolled back (default: it goes on "
        "in the background; nbdeploy status NAME shows it)",
    )
    parser.add_argument(
        "--log-sample",
        type=_fraction,
        metavar="FRACTION",
        help="the share of requests the request log records, above 0 and at most 1 "
        "(default 1: every request; nbdeploy logs NAME --requests shows them)",
    )
    parser.add_argument(
        "--redact",
        action="append",
        type=_field,
        metavar="FIELD",
        help="never store this key of a request (at any depth of its JSON body) in the "
        "request log; repeat for several",
    )
    parser.add_argument(
        "--keep-warm",
        type=float,
        metavar="SECONDS",
        help=f"keep the previous version running this long after a switch, so that "
        f"rollback is instant (default {DEFAULT_KEEP_WARM_SECONDS:g})",
    )


def percentages(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: percentages such as 10,25,50,100") from None
    if not values or any(not 0 < v <= 100 for v in values) or values != sorted(values):
        raise argparse.ArgumentTypeError(
            f"{text!r}: increasing percentages between 0 (excluded) and 100"
        )
    return values


def _fraction(text: str) -> float:
    try:
        return check_log_sample(text)
    except ValueError as error:  # argparse names the flag itself
        raise argparse.ArgumentTypeError(str(error).removeprefix("--log-sample ")) from None


def _field(text: str) -> str:
    try:
        return check_redact([text])[0]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--redact ")) from None


def check_log_sample(value: Any) -> float:
    """``--log-sample``: a fraction above 0 and at most 1 (ValueError otherwise)."""
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = math.nan
    if isinstance(value, bool) or not 0 < fraction <= 1:
        raise ValueError(
            f"--log-sample {value!r}: the share of requests to log, above 0 and at most 1 "
            "(e.g. 0.1 for one request in ten)"
        )
    return fraction


def check_redact(fields: Any) -> list[str]:
    """``--redact``: names of keys (a name, or a list of them; ValueError otherwise)."""
    if isinstance(fields, str):
        fields = [fields]
    checked: list[str] = []
    for name in fields or []:
        if not isinstance(name, str) or not name.strip() or len(name) > REDACT_FIELD_MAX:
            raise ValueError(
                f"--redact {name!r}: the name of a key of the request's JSON body "
                f"(1-{REDACT_FIELD_MAX} characters), e.g. --redact ssn"
            )
        checked.append(name)
    return sorted(set(checked))


def parse_sticky(text: str | None) -> dict[str, str] | None:
    """``header:X-User`` or ``field:user_id`` as the router's configuration has it."""
    if not text:
        return None
    kind, _, name = text.partition(":")
    if kind not in ("header", "field") or not name.strip() or len(name) > 100:
        raise ValueError(f"--sticky {text!r}: write header:NAME or field:NAME")
    return {kind: name.strip()}
