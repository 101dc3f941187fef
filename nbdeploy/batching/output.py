"""The output file and the errors file, assembled from a job's parts.

The output's kind follows its extension: Parquet (``.parquet``, ``.pq``), CSV (``.csv``) or
JSON Lines (``.jsonl``, ``.ndjson``); anything else is refused before any work. Chunks are
written in order, as they are scored (:class:`OutputStream`), into a temporary file beside
the output, which is then renamed into place: a reader never sees half an output, and the
same chunks always give the same bytes (whichever executor scored them, resumed or not).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError

OUTPUT_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
ERRORS_SUFFIX = ".errors.jsonl"


class BatchOutputError(NbdeployError):
    """The output cannot be written where or as asked."""


def output_format(path: Path) -> str:
    kind = OUTPUT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BatchOutputError(
            f"--output {path}: unknown kind of file {path.suffix or '(no extension)'!r}",
            "end the name in .parquet (or .pq), .csv, or .jsonl (or .ndjson)",
        )
    return kind


def check_output(path: Path) -> str:
    """The output's kind, after checking that its folder exists and is writable."""
    kind = output_format(path)
    folder = path.parent
    if not folder.is_dir():
        raise BatchOutputError(
            f"--output {path}: the folder {folder} does not exist", "create it first"
        )
    if not os.access(folder, os.W_OK):
        raise BatchOutputError(f"--output {path}: the folder {folder} is not writable")
    if path.is_dir():
        raise BatchOutputError(f"--output {path} is a folder", "name a file")
    return kind


def default_errors_path(output: Path) -> Path:
    return output.with_name(output.name + ERRORS_SUFFIX)


def final_schema(schemas: list[Any], kept_schema: Any) -> Any:
    """The output's schema: the kept columns, then every prediction column the parts have
    (types unified: an integer column with a float in another part becomes float)."""
    import pyarrow as pa

    if not schemas:
        return kept_schema
    unified = pa.unify_schemas(schemas, promote_options="permissive")
    names = list(kept_schema.names) + [n for n in unified.names if n not in kept_schema.names]
    return pa.schema([unified.field(name) for name in names])


def conformed(table: Any, schema: Any) -> Any:
    """``table`` with exactly ``schema``'s columns and types (missing ones null)."""
    import pyarrow as pa

    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            columns.append(column if column.type == field.type else column.cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def write_output(path: Path, kind: str, schema: Any, tables: Iterator[Any]) -> int:
    """Stream ``tables`` into ``path`` (atomically); the number of rows written."""
    writer = TableWriter(path, kind, schema)
    try:
        for table in tables:
            writer.write(table)
    except BaseException:
        writer.discard()
        raise
    return writer.commit()


class TableWriter:
    """Tables written one after the other into a temporary file beside ``path``, of the
    output's kind and with exactly ``schema``; renamed into place by :meth:`commit`."""

    def __init__(self, path: Path, kind: str, schema: Any) -> None:
        import tempfile

        self.path, self.kind, self.schema = path, kind, schema
        descriptor, self.temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(descriptor)
        self.rows = 0
        self._writer: Any = None
        self._handle: Any = None
        if kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            # Dictionary pages for the columns whose values repeat (ids, categories, labels),
            # not for floats: measured features rarely repeat, and trying costs a third of
            # the write and makes the file bigger (1M rows x 22 columns: 1.5 s, 195 MB with
            # dictionaries everywhere; 0.54 s, 158 MB without them on floats).
            repeating = [f.name for f in schema if not pa.types.is_floating(f.type)]
            self._writer = pq.ParquetWriter(self.temporary, schema, use_dictionary=repeating)
        elif kind == "csv":
            import pyarrow.csv as pacsv

            self._writer = pacsv.CSVWriter(self.temporary, _csv_schema(schema))
        else:
            self._handle = open(self.temporary, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, table: Any) -> None:
        table = conformed(table, self.schema)
        if self.kind == "parquet":
            self._writer.write_table(table)
        elif self.kind == "csv":
            self._writer.write_table(_csv_table(table))
        else:
            for record in table.to_pylist():
                self._handle.write(json.dumps(record, default=str, allow_nan=False) + "\n")
        self.rows += table.num_rows

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def commit(self) -> int:
        """Close the file and rename it into place; the rows written."""
        try:
            self._close()
            os.chmod(self.temporary, 0o644 & ~_umask())
            os.replace(self.temporary, self.path)
        except BaseException:
            self.discard()
            raise
        return self.rows

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._close()
        Path(self.temporary).unlink(missing_ok=True)


class OutputStream:
    """The output written while the job runs: each chunk's rows as soon as every chunk
    before it is written (chunks an earlier, killed run finished are read from their
    parts), so that nothing is left to do at the end but a rename. The stream's schema is
    the first chunk's; a later chunk that does not fit it (a new prediction column, an
    integer column that meets a float) ends the stream, and the output is then assembled
    from the parts with the schema they all fit (:func:`final_schema`). Either way the same
    chunks give the same bytes."""

    def __init__(
        self, path: Path, kind: str, kept_schema: Any, read_part: Callable[[int], Any]
    ) -> None:
        self.path, self.kind, self.kept_schema = path, kind, kept_schema
        self.read_part = read_part
        self.finished_before: set[int] = set()
        self.ready: dict[int, Any] = {}
        self.next_index = 0
        self.writer: TableWriter | None = None
        self.broken = False

    def add(self, index: int, table: Any) -> None:
        """A scored chunk; written now if its turn has come (else kept until it has)."""
        if self.broken:
            return
        self.ready[index] = table
        self._drain()

    def _drain(self) -> None:
        while not self.broken:
            index = self.next_index
            if index in self.ready:
                table = self.ready.pop(index)
            elif index in self.finished_before:
                table = self.read_part(index)
            else:
                return
            self._write(table)
            self.next_index += 1

    def _write(self, table: Any) -> None:
        if self.writer is None:
            schema = final_schema([table.schema], self.kept_schema)
            self.writer = TableWriter(self.path, self.kind, schema)
        elif final_schema([self.writer.schema, table.schema], self.kept_schema) != (
            self.writer.schema
        ):
            self.abandon()
            return
        self.writer.write(table)

    def abandon(self) -> None:
        self.broken = True
        self.ready.clear()
        if self.writer is not None:
            self.writer.discard()
            self.writer = None

    def finish(self, chunks: int, schemas: Callable[[], list[Any]], parts: Any) -> int:
        """The output in place, from the stream or assembled from the parts; its rows."""
        self._drain()
        if not self.broken and self.next_index == chunks and self.writer is not None:
            return self.writer.commit()
        self.abandon()
        return write_output(self.path, self.kind, final_schema(schemas(), self.kept_schema), parts)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _csv_schema(schema: Any) -> Any:
    import pyarrow as pa

    return pa.schema([pa.field(f.name, _csv_type(f.type)) for f in schema])


def _csv_type(arrow_type: Any) -> Any:
    import pyarrow as pa

    nested = pa.types.is_nested(arrow_type)
    return pa.string() if nested or pa.types.is_null(arrow_type) else arrow_type


def _csv_table(table: Any) -> Any:
    """Lists and structs (a result per row that is a list) as JSON text in CSV."""
    import pyarrow as pa

    columns = []
    for column in table.columns:
        if pa.types.is_nested(column.type):
            values = [None if v is None else json.dumps(v) for v in column.to_pylist()]
            columns.append(pa.array(values, type=pa.string()))
        elif pa.types.is_null(column.type):
            columns.append(pa.nulls(len(column), type=pa.string()))
        else:
            columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def write_errors(path: Path, lines: Iterator[str]) -> int:
    """The errors file (JSON Lines, one failed row a line), atomically; the count."""
    import tempfile

    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    count = 0
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line if line.endswith("\n") else line + "\n")
                count += 1
        os.chmod(temporary, 0o644 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count
