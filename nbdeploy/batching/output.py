"""The output file and the errors file, assembled from a job's parts.

The output's kind follows its extension: Parquet (``.parquet``, ``.pq``), CSV (``.csv``) or
JSON Lines (``.jsonl``, ``.ndjson``); anything else is refused before any work. Parts are
read one at a time, in order, and streamed into a temporary file beside the output, which
is then renamed into place: a reader never sees half an output, and the same parts always
give the same bytes (whichever executor scored them, resumed or not).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
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
    import tempfile

    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(descriptor)
    rows = 0
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetWriter(temporary, schema) as writer:
                for table in tables:
                    writer.write_table(conformed(table, schema))
                    rows += table.num_rows
        elif kind == "csv":
            import pyarrow.csv as pacsv

            with pacsv.CSVWriter(temporary, _csv_schema(schema)) as writer:
                for table in tables:
                    writer.write_table(_csv_table(conformed(table, schema)))
                    rows += table.num_rows
        else:
            with open(temporary, "w", encoding="utf-8") as handle:
                for table in tables:
                    for record in conformed(table, schema).to_pylist():
                        handle.write(json.dumps(record, default=str, allow_nan=False) + "\n")
                    rows += table.num_rows
        os.chmod(temporary, 0o644 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return rows


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
