"""Find what a packaged function really imports: ``python -m nbdeploy.service.probe DIR``
loads the function module and its objects in a fresh interpreter, calls the function on
``DIR/example.json`` and prints the top-level modules that got imported (MLflow does the
same to find requirements that a model imports lazily). A failing example call is reported:
it is what the service would meet.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

EXAMPLE = "example.json"


def main() -> None:
    directory = Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(directory))
    result: dict[str, object] = {"error": None}
    needed: set[str] = set()
    try:
        import joblib
        from joblib import numpy_pickle

        # Every class a saved object needs is named in its pickle: record their modules.
        original_find_class = numpy_pickle.NumpyUnpickler.find_class

        def find_class(self: object, module: str, name: str) -> object:
            needed.add(module.split(".")[0])
            return original_find_class(self, module, name)

        numpy_pickle.NumpyUnpickler.find_class = find_class
        module = importlib.import_module("nbdeploy_function")
        module.load_objects(
            {
                spec["name"]: joblib.load(directory / "objects" / spec["file"])  # our own files
                for spec in module.OBJECTS
            }
        )
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        example = json.loads((directory / EXAMPLE).read_text(encoding="utf-8"))
        before_call = set(sys.modules)
        try:
            getattr(module, manifest["function"])(**example)
        finally:
            # What the call itself imports: the lazily imported packages.
            needed.update(name.split(".")[0] for name in set(sys.modules) - before_call)
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
    result["modules"] = sorted(needed - {"nbdeploy_function", "__main__", "builtins"})
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
