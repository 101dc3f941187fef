"""Find what a packaged version really imports: ``python -m nbdeploy.service.probe DIR``
loads the version (its pickles, objects and local modules) in a fresh interpreter, as the
service will, calls it on ``DIR/example.json`` and prints the top-level modules that the
pickles named or the call imported (MLflow does the same to find requirements that a model
imports lazily). A failing load or example call is reported: it is what the service would
meet.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

EXAMPLE = "example.json"


def main() -> None:
    directory = Path(sys.argv[1]).resolve()
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
        answer = runtime.load_version(directory)
        manifest = runtime.read_manifest(directory)
        example = json.loads((directory / EXAMPLE).read_text(encoding="utf-8"))
        before_call = set(sys.modules)
        try:
            call_example(answer, manifest, example)
        finally:
            # What the call itself imports: the lazily imported packages.
            needed.update(name.split(".")[0] for name in set(sys.modules) - before_call)
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
    result["modules"] = sorted(
        needed - {"nbdeploy", "nbdeploy_runtime", "__main__", "builtins", "copyreg"}
    )
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


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
