"""The public Python API stays callable however often it is used and whatever was imported
first: no subpackage may share a name with a public function."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import nbdeploy


def test_no_subpackage_or_module_shadows_a_public_function():
    modules = {m.name for m in pkgutil.iter_modules(nbdeploy.__path__)}
    public = {name for name in nbdeploy.__all__ if not name.startswith("_")}
    assert modules & public == set()


def test_every_public_function_stays_a_function_after_everything_is_imported():
    before = {name: getattr(nbdeploy, name) for name in nbdeploy.__all__ if name != "__version__"}
    for module in pkgutil.walk_packages(nbdeploy.__path__, "nbdeploy."):
        if module.name.endswith("__main__"):
            continue
        importlib.import_module(module.name)
    for name, value in before.items():
        assert callable(value), name
        now = getattr(nbdeploy, name)
        assert isinstance(now, types.FunctionType), f"nbdeploy.{name} is now {now!r}"
        assert now is value


def test_public_functions_called_twice_in_one_process(tmp_path):
    script = (
        "import nbdeploy\n"
        "for _ in range(2):\n"
        "    assert nbdeploy.status() == []\n"
        "    assert nbdeploy.runs() == []\n"
        "    assert nbdeploy.prune() == []\n"
        "    try:\n"
        "        nbdeploy.deploy(len)\n"
        "    except Exception as error:\n"
        "        assert 'not a function defined with `def`' in str(error), error\n"
        "    try:\n"
        "        nbdeploy.stop('nothing')\n"
        "    except Exception as error:\n"
        "        assert \"no deployment named 'nothing'\" in str(error), error\n"
        "print('ok')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"NBDEPLOY_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0 and completed.stdout.strip() == "ok", completed.stderr
