"""A batch job's folder under NBDEPLOY_HOME: finished chunks as part files, for resuming.

The folder is named by a fingerprint of what decides the output: the deployment and
version, the input files (paths, sizes, modification times) and the options that change
the rows (columns kept and fed, chunk size). Each finished chunk is written atomically
(temporary file, then rename) as ``NNNNNNNN.arrow`` (its output rows, an uncompressed
Arrow IPC file: written and read back at memory speed, where Parquet's encoding would cost
as much again as the output's own), after its failed rows ``NNNNNNNN.errors.jsonl``: a part
whose Arrow file exists is complete. A job killed
at any point (kill -9 included) resumes from its complete parts when the same command runs
again. One process works in a folder at a time (an advisory lock, released by the kernel
when the process dies). Everything here is owner-only; the folder goes after success.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from nbdeploy.errors import NbdeployError
from nbdeploy.private_files import (
    open_private,
    private_dir,
    write_private_bytes,
    write_private_text,
)

JOBS_FOLDER = "batch-jobs"
SPEC_FILE = "job.json"
LOCK_FILE = "lock"


class BatchJobError(NbdeployError):
    """The job folder cannot be used: another process works in it, or nothing to resume."""


PART_SUFFIX = ".arrow"


def fingerprint(spec: dict[str, Any]) -> str:
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def jobs_root() -> Path:
    from nbdeploy import config

    return config.home() / JOBS_FOLDER


class JobFolder:
    """The folder of one job (see the module docstring); a context manager holding its lock."""

    def __init__(self, key: str, spec: dict[str, Any]) -> None:
        self.key = key
        self.spec = spec
        self.path = jobs_root() / key[:24]
        self._lock: IO[Any] | None = None

    def exists(self) -> bool:
        return (self.path / SPEC_FILE).is_file()

    def open(self) -> JobFolder:
        import fcntl

        private_dir(self.path)
        handle = open_private(self.path / LOCK_FILE, "ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise BatchJobError(
                f"another batch job with the same deployment, input and options is running "
                f"(job folder {self.path})",
                "wait for it to finish, or stop it; a killed job resumes when run again",
            ) from None
        self._lock = handle
        if not self.exists():
            write_private_text(self.path / SPEC_FILE, json.dumps(self.spec, default=str))
        return self

    def close(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()
            self._lock = None

    def __enter__(self) -> JobFolder:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- parts ---------------------------------------------------------------------------
    def part_path(self, index: int) -> Path:
        return self.path / f"{index:08d}{PART_SUFFIX}"

    def errors_path(self, index: int) -> Path:
        return self.path / f"{index:08d}.errors.jsonl"

    def finished(self) -> set[int]:
        """The chunks whose parts are complete."""
        done: set[int] = set()
        if not self.path.is_dir():
            return done
        for entry in self.path.iterdir():
            if entry.suffix == PART_SUFFIX and entry.stem.isdigit():
                done.add(int(entry.stem))
        return done

    def write_part(self, index: int, table: Any, errors: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        lines = "".join(json.dumps(error, default=str) + "\n" for error in errors)
        write_private_text(self.errors_path(index), lines)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        write_private_bytes(self.part_path(index), sink.getvalue().to_pybytes())

    def part_schemas(self, count: int) -> list[Any]:
        return [self._reader(i).schema for i in range(count)]

    def part_rows(self, index: int) -> int:
        reader = self._reader(index)
        return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))

    def read_part(self, index: int) -> Any:
        """One finished chunk's output rows (a pyarrow Table)."""
        return self._reader(index).read_all()

    def _reader(self, index: int) -> Any:
        import pyarrow as pa

        return pa.ipc.open_file(pa.memory_map(str(self.part_path(index))))

    def part_error_count(self, index: int) -> int:
        path = self.errors_path(index)
        if not path.is_file():
            return 0
        with open(path, encoding="utf-8") as handle:
            return sum(1 for line in handle if line.strip())

    def tables(self, count: int) -> Iterator[Any]:
        """The parts' tables, one at a time, in order."""
        for index in range(count):
            yield self.read_part(index)

    def error_lines(self, count: int) -> Iterator[str]:
        for index in range(count):
            path = self.errors_path(index)
            if path.is_file():
                with open(path, encoding="utf-8") as handle:
                    yield from (line for line in handle if line.strip())

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)


def abandoned_temporaries(folder: Path) -> None:
    """Temporary files of a killed job (a part being written) are removed on resume."""
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith("."):
                with contextlib.suppress(OSError):
                    os.unlink(entry)
