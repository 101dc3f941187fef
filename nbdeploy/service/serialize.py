"""Pickle a captured function and its objects by value, and hash them.

Notebook functions and classes (and everything they reach: closures, decorated helpers,
``functools.lru_cache`` helpers, classes at any depth of an object) are pickled by value
with cloudpickle; the user's own modules are pickled by reference and shipped as files.
Content hashes stream the pickle into the hash and read array buffers directly (no copy
in memory), with the parts that change on every kernel start (cell file names, cloudpickle's
class ids) left out, so that an equal object rebuilt after a restart hashes the same.

What cannot live in another process (an open file, a socket, a generator, a database
connection, a lock) is refused here, before anything is built.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import socket
import sqlite3
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cloudpickle

from nbdeploy.errors import NbdeployError
from nbdeploy.private_files import open_private
from nbdeploy.service.runtime import OBJECT_REFERENCE

NOTEBOOK_MODULES = frozenset({"__main__", "__mp_main__"})
PROTOCOL = 5
# Kinds of values that only make sense in the process that made them.
_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))
_UNCAPTURABLE_TYPES: list[tuple[tuple[type, ...], str, str]] = [
    (
        (io.IOBase,),
        "an open file",
        "read what you need into a variable (text = f.read()), or open the file inside "
        "the function",
    ),
    (
        (socket.socket,),
        "a network socket",
        "open the connection inside the function",
    ),
    (
        (types.GeneratorType, types.AsyncGeneratorType, types.CoroutineType),
        "a generator",
        "materialize it first (values = list(generator))",
    ),
    (
        (sqlite3.Connection, sqlite3.Cursor),
        "a live database connection",
        "connect inside the function, or load the data into a DataFrame first",
    ),
    (
        (*_LOCK_TYPES, threading.Condition, threading.Semaphore, threading.Event),
        "a lock",
        "create it inside the function (or in a module of your own)",
    ),
    (
        (threading.Thread, subprocess.Popen),
        "a running thread or process",
        "start it inside the function",
    ),
]
# Connection-like classes of common client libraries, by (module prefix, class name part).
_CONNECTION_CLASSES = (
    ("sqlalchemy", ("Connection", "Engine", "Session")),
    ("psycopg", ("Connection", "Cursor")),
    ("psycopg2", ("connection", "cursor")),
    ("pymysql", ("Connection", "Cursor")),
    ("redis", ("Redis", "Connection")),
    ("pymongo", ("MongoClient",)),
    ("duckdb", ("DuckDBPyConnection",)),
)


class CaptureError(NbdeployError):
    """The function (or one of its objects) cannot be turned into a service as it is."""


def uncapturable(value: Any) -> tuple[str, str] | None:
    """(what it is, what to do instead) for values that cannot be copied to a service."""
    for kinds, what, advice in _UNCAPTURABLE_TYPES:
        if isinstance(value, kinds):
            return what, advice
    klass = type(value)
    module = getattr(klass, "__module__", "") or ""
    for prefix, names in _CONNECTION_CLASSES:
        if module.split(".")[0] == prefix and any(n in klass.__name__ for n in names):
            return "a live database connection", (
                "connect inside the function, or load the data into a DataFrame first"
            )
    return None


@dataclass
class Reached:
    """What pickling met: modules (top-level names) and the notebook's own definitions that
    pickles made by other libraries will name as ``__main__.NAME``."""

    modules: set[str] = field(default_factory=set)
    definitions: dict[str, Any] = field(default_factory=dict)


def is_lru_wrapper(value: Any) -> bool:
    return isinstance(value, functools._lru_cache_wrapper)


def without_lru_cache(value: Any) -> Any:
    """The function a ``functools.lru_cache`` wrapper caches (other values as they are)."""
    return value.__wrapped__ if is_lru_wrapper(value) else value


class _Pickler(cloudpickle.Pickler):
    """cloudpickle with nbdeploy's rules: global objects as references, lru_cache helpers
    by value, refusals, and (``stable``) no per-process identifiers."""

    def __init__(
        self,
        file: IO[bytes] | Any,
        *,
        label: str,
        reached: Reached,
        references: dict[int, str] | None = None,
        stable: bool = False,
        buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
        by_name: set[int] | None = None,
    ) -> None:
        super().__init__(file, protocol=PROTOCOL, buffer_callback=buffer_callback)
        self.label = label
        self.reached = reached
        self.references = references or {}
        self.stable = stable
        self.by_name = by_name or set()

    def persistent_id(self, obj: Any) -> Any:
        name = self.references.get(id(obj))
        return (OBJECT_REFERENCE, name) if name is not None else None

    def reducer_override(self, obj: Any) -> Any:
        refused = uncapturable(obj)
        if refused is not None:
            what, advice = refused
            raise CaptureError(
                f"{self.label} holds {what} ({type(obj).__module__}.{type(obj).__qualname__}): "
                "it cannot be copied into a service",
                advice,
            )
        if id(obj) in self.by_name:
            # A notebook function inside an object (FunctionTransformer(func=...)): named as
            # __main__.NAME, the one the version's definitions put there, so that framework
            # savers, which pickle functions by name, find the very same object.
            return NotImplemented
        if isinstance(obj, types.ModuleType):
            self.reached.modules.add(obj.__name__.split(".")[0])
        elif isinstance(obj, type | types.FunctionType) or is_lru_wrapper(obj):
            self._record(obj)
        if is_lru_wrapper(obj) and getattr(obj, "__module__", None) in NOTEBOOK_MODULES:
            parameters = obj.cache_parameters()
            return (
                functools._lru_cache_wrapper,
                (obj.__wrapped__, parameters["maxsize"], parameters["typed"], functools._CacheInfo),
            )
        if self.stable and isinstance(obj, types.CodeType):
            # A cell's code is compiled from a file named after the kernel's process.
            obj = obj.replace(co_filename="<notebook>", co_consts=_ordered(obj.co_consts))
            return _code_reduce(obj)
        reduced = super().reducer_override(obj)
        if self.stable and isinstance(obj, type) and isinstance(reduced, tuple):
            reduced = _without_tracker_id(obj, reduced)
        return reduced

    def _record(self, obj: Any) -> None:
        module = getattr(obj, "__module__", None) or ""
        if module in NOTEBOOK_MODULES:
            top = (getattr(obj, "__qualname__", "") or "").split(".")[0]
            if top and "<" not in top:
                self.reached.definitions.setdefault(top, obj)
        elif module and module.split(".")[0] in sys.modules:
            # Only real modules: namedtuple's generated __new__ names "namedtuple_<Type>".
            self.reached.modules.add(module.split(".")[0])


def _code_reduce(code: types.CodeType) -> Any:
    from cloudpickle import cloudpickle as implementation

    return implementation._code_reduce(code)


def _ordered(constants: tuple[Any, ...]) -> tuple[Any, ...]:
    """Code constants with frozensets (``x in {"a", "b"}``) in a fixed order: a set of
    strings iterates in an order that changes with each process's hash seed."""
    return tuple(
        ("<frozenset>", *sorted(map(repr, c))) if isinstance(c, frozenset) else c for c in constants
    )


def _without_tracker_id(klass: type, reduced: tuple[Any, ...]) -> tuple[Any, ...]:
    """cloudpickle names each class it pickles by value with a random id: hash without it."""
    from cloudpickle import cloudpickle as implementation

    tracker = implementation._DYNAMIC_CLASS_TRACKER_BY_CLASS.get(klass)
    if tracker is None or len(reduced) < 2 or not isinstance(reduced[1], tuple):
        return reduced
    arguments = tuple("<class>" if item == tracker else item for item in reduced[1])
    return (reduced[0], arguments, *reduced[2:])


class _HashWriter:
    def __init__(self, digest: Any) -> None:
        self.digest = digest

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return len(data)


def content_hash(
    value: Any, *, label: str, reached: Reached, references: dict[int, str] | None = None
) -> str:
    """sha256 of ``value`` as it will be pickled; array buffers are read in place."""
    digest = hashlib.sha256()

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        with buffer.raw() as raw:
            digest.update(raw)
        return False  # not written into the stream: hashed above

    pickler = _Pickler(
        _HashWriter(digest),
        label=label,
        reached=reached,
        references=references,
        stable=True,
        buffer_callback=out_of_band,
    )
    _dump(pickler, value, label)
    return digest.hexdigest()


def save(
    value: Any,
    path: Path,
    *,
    label: str,
    reached: Reached | None = None,
    references: dict[int, str] | None = None,
    by_name: set[int] | None = None,
) -> None:
    """Pickle ``value`` into ``path`` by value, streamed (large buffers are not copied);
    the functions in ``by_name`` are pickled by name instead. The file is owner-only: it
    holds the notebook's objects."""
    with open_private(path, "wb") as handle:
        pickler = _Pickler(
            handle,
            label=label,
            reached=reached or Reached(),
            references=references,
            by_name=by_name,
        )
        _dump(pickler, value, label)


def _dump(pickler: Any, value: Any, label: str) -> None:
    try:
        pickler.dump(value)
    except CaptureError:
        raise
    except RecursionError:
        raise CaptureError(
            f"{label} is nested too deeply to be saved", "simplify the object"
        ) from None
    except Exception as error:
        raise CaptureError(
            f"{label} cannot be saved: {type(error).__name__}: {error}",
            "services can use objects that pickle (models, arrays, frames, plain data); "
            "create connections, files and other live resources inside the function",
        ) from None
