"""Choosing the Jupyter kernel a run executes in."""

from __future__ import annotations

from dataclasses import dataclass

from nbdeploy.errors import KernelNotFoundError
from nbdeploy.notebook.reader import Notebook

FALLBACK_KERNEL = "python3"


@dataclass(frozen=True)
class KernelChoice:
    name: str
    notice: str | None = None


def installed_kernels() -> dict[str, str]:
    """Installed kernelspecs: name -> display name."""
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager()
    names: dict[str, str] = {}
    for name in sorted(manager.find_kernel_specs()):
        try:
            names[name] = manager.get_kernel_spec(name).display_name
        except Exception:  # a broken kernelspec on disk is not ours to fail on
            names[name] = name
    return names


def choose_kernel(notebook: Notebook, requested: str | None = None) -> KernelChoice:
    """``requested`` when given (it must exist); else the notebook's kernelspec when it is
    installed; else this interpreter's Python kernel, with a one-line notice."""
    available = installed_kernels()
    if requested:
        if requested not in available:
            listing = ", ".join(f"{name} ({display})" for name, display in available.items())
            raise KernelNotFoundError(
                f"kernel {requested!r} is not installed; available kernels: {listing or 'none'}",
                "install it (python -m ipykernel install --user --name NAME) or pick one above",
            )
        return KernelChoice(requested)
    wanted = notebook.kernel_name
    if wanted and wanted in available:
        return KernelChoice(wanted)
    if FALLBACK_KERNEL not in available:
        raise KernelNotFoundError(
            f"{notebook.name} asks for kernel {wanted!r}, which is not installed, and no "
            f"{FALLBACK_KERNEL!r} kernel is available",
            "install ipykernel in this environment, or pass --kernel NAME",
        )
    notice = None
    if wanted:
        notice = (
            f"kernel {wanted!r} from {notebook.name} is not installed; "
            f"using {FALLBACK_KERNEL!r} ({available[FALLBACK_KERNEL]})"
        )
    return KernelChoice(FALLBACK_KERNEL, notice)
