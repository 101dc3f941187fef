"""Requirements of a service: exactly the distributions its code and objects use, pinned to
the versions installed in the kernel's environment (never "latest" from an index).

Modules map to distributions through ``importlib.metadata.packages_distributions()``.
User-given extras are parsed as PEP 508 requirements, so nothing else (pip options, URLs,
shell text) can reach a requirements file.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import json
import re
import sys
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError

# Modules that are not requirements: the notebook itself, and what every service has.
_NOT_REQUIREMENTS = {"__main__", "__mp_main__", "builtins", "nbdeploy", "IPython", "ipykernel"}
_PIP_LINE = re.compile(r"^\s*[%!]\s*(?:pip|conda|mamba|uv pip)\s+install\s+(?P<args>.+)$", re.M)


class RequirementError(NbdeployError):
    """A requirement given by the user is not a valid requirement."""


@dataclass
class Requirements:
    pinned: list[str] = field(default_factory=list)  # "scikit-learn==1.9.1", sorted
    unresolved: list[str] = field(default_factory=list)  # modules from no distribution

    def lines(self) -> str:
        return "".join(f"{line}\n" for line in self.pinned)


def pin_requirements(modules: Iterable[str], extra: Iterable[str] = ()) -> Requirements:
    """Pin the distributions that provide ``modules``; add validated ``extra`` requirements."""
    providers = installed_top_levels()
    pins: dict[str, str] = {}
    unresolved: list[str] = []
    for module in sorted(set(modules)):
        top = module.split(".")[0]
        if top in _NOT_REQUIREMENTS or top in sys.stdlib_module_names or top.startswith("_"):
            continue
        distributions = providers.get(top)
        if not distributions:
            unresolved.append(top)
            continue
        for distribution in distributions:
            name, version = _installed(distribution)
            pins[_canonical(name)] = f"{name}=={version}"
    for requirement in extra:
        parsed = parse_requirement(requirement)
        pins[_canonical(parsed.name)] = str(parsed)
    return Requirements(pinned=sorted(pins.values(), key=str.lower), unresolved=unresolved)


def provided_by_distribution(top: str, path: Path) -> bool:
    """Whether the module ``top`` (imported from ``path``) comes from an installed
    distribution, editable ones included: then it is a requirement, not a local module."""
    return top in installed_top_levels() or _editable_distribution_provides(top, path)


def installed_top_levels() -> Mapping[str, list[str]]:
    """Top-level module -> distributions (``packages_distributions``, which scans every
    installed distribution: cached for a few seconds, the length of a deploy)."""
    return _packages_distributions(int(time.monotonic() // 30))


@functools.lru_cache(maxsize=1)
def _packages_distributions(_period: int) -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


def _editable_distribution_provides(top: str, path: Path) -> bool:
    """An editable install (PEP 660, as hatchling, pdm and flit make them) whose name is the
    module's and whose project folder holds it: ``packages_distributions`` cannot see its
    modules, since its RECORD lists only a .pth file."""
    wanted = re.sub(r"[-_.]+", "_", top).lower()
    for distribution in metadata.distributions():
        name = re.sub(r"[-_.]+", "_", distribution.metadata["Name"] or "").lower()
        if name != wanted:
            continue
        try:
            info = json.loads(distribution.read_text("direct_url.json") or "{}")
        except ValueError:
            continue
        url = str(info.get("url", ""))
        if info.get("dir_info", {}).get("editable") and url.startswith("file://"):
            root = Path(urllib.parse.unquote(url[len("file://") :])).resolve()
            if path.is_relative_to(root):
                return True
    return False


def _installed(distribution: str) -> tuple[str, str]:
    dist = metadata.distribution(distribution)
    return dist.metadata["Name"], dist.version


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(text: str) -> Any:
    """A PEP 508 requirement without URLs; anything else is a RequirementError."""
    from packaging.requirements import InvalidRequirement, Requirement

    stripped = text.strip()
    if not stripped or stripped.startswith("-") or "\n" in text or "\r" in text:
        raise RequirementError(
            f"{text!r} is not a requirement",
            "give a package with an optional version, e.g. --requirements 'xgboost>=2.0'",
        )
    try:
        requirement = Requirement(stripped)
    except InvalidRequirement as exc:
        raise RequirementError(f"{text!r} is not a valid requirement: {exc}") from None
    if requirement.url:
        raise RequirementError(
            f"{text!r} points to a URL; builds use installed versions and work offline",
            "install the package in the kernel's environment and name it without a URL",
        )
    return requirement


def notebook_pip_installs(cells: Iterable[str]) -> list[str]:
    """``%pip install`` / ``!pip install`` lines of the notebook, to report to the user."""
    found: list[str] = []
    for cell in cells:
        for match in _PIP_LINE.finditer(cell):
            found.append(match.group(0).strip())
    return found
