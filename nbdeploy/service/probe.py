"""Find what a packaged version really imports: ``python -m nbdeploy.service.probe DIR``
loads the version (its pickles, objects and local modules) in a fresh interpreter, as the
service will, calls it on ``DIR/example.json`` and prints the top-level modules that the
pickles named or the call imported (MLflow does the same to find requirements that a model
imports lazily). A failing load or example call is reported: it is what the service would
meet.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nbdeploy.private_files import restrict_umask

EXAMPLE = "example.json"


def main() -> None:
    restrict_umask()  # what the version writes while probed stays owner-only
    result = probe_version(Path(sys.argv[1]))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


def probe_version(directory: Path) -> dict[str, Any]:
    """Load the version in ``directory`` and call it on its example: {"error", "modules"}.

    Changes the working directory and ``sys.path``: run it in a process of its own. The
    process may have imported packages already (nbdeploy's launcher forks probes from a warm
    interpreter), so a module counts as used when the pickles name it, the call imports it,
    or the version's own code calls into it during the call."""
    directory = directory.resolve()
    # Run from elsewhere than the notebook's folder: the version must carry what it uses.
    os.chdir(directory)
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]
    result: dict[str, Any] = {"error": None}
    needed: set[str] = set()
    try:
        from nbdeploy.service import runtime

        class RecordingUnpickler(runtime.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                needed.add(module.split(".")[0])
                return super().find_class(module, name)

        runtime.Unpickler = RecordingUnpickler  # type: ignore[misc]
        local = directory / runtime.LOCAL_MODULES
        own = {"__main__", *(p.stem for p in local.iterdir())} if local.is_dir() else {"__main__"}
        answer = runtime.load_version(directory)
        manifest = runtime.read_manifest(directory)
        example = json.loads((directory / EXAMPLE).read_text(encoding="utf-8"))
        before = set(sys.modules)
        try:
            with _running_modules(needed, own):
                call_example(answer, manifest, example)
        finally:
            # What the call itself imports: the lazily imported packages.
            needed.update(name.split(".")[0] for name in set(sys.modules) - before)
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
    result["modules"] = sorted(
        needed - {"nbdeploy", "nbdeploy_runtime", "__main__", "builtins", "copyreg"}
    )
    return result


@contextlib.contextmanager
def _running_modules(seen: set[str], own: set[str]) -> Iterator[None]:
    """Record the top-level package of every function (or builtin) that the version's own
    code calls while the block runs: ``own`` names its modules ("__main__" for the
    notebook's code, and its local modules)."""

    def top(name: Any) -> str | None:
        return name.split(".")[0] if isinstance(name, str) and name else None

    def record(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            caller = frame.f_back
            callee = top(frame.f_globals.get("__name__"))
        elif event == "c_call":
            caller = frame
            callee = top(getattr(arg, "__module__", None))
        else:
            return
        if callee and caller is not None and top(caller.f_globals.get("__name__")) in own:
            seen.add(callee)

    previous = sys.getprofile()
    sys.setprofile(record)
    try:
        yield
    finally:
        sys.setprofile(previous)


def call_example(answer: Any, manifest: dict[str, Any], example: dict[str, Any]) -> Any:
    """Call a loaded version on a request body, converting rows as the service does."""
    from nbdeploy.service import runtime

    schema = manifest["schema"]
    if schema["mode"] == "hints":
        return answer(**example)
    rows = example[schema["parameter"]]
    endpoint = runtime.RowsEndpoint(
        answer if manifest["kind"] == "model" else lambda v: answer(**{schema["parameter"]: v}),
        schema,
    )
    return endpoint(rows)


if __name__ == "__main__":
    main()
