"""The files a batch job reads, and their rows streamed in chunks of a fixed size.

INPUT is one file, a folder (its CSV, Parquet and JSON Lines files, sorted by name) or a
glob. Rows are read with pyarrow, a block at a time, and regrouped into chunks of exactly
``chunk_rows`` rows (the last one shorter): memory follows the chunk size, never the file.

CSV values are read as text and JSON Lines values as they are, so that a value that does
not fit its column reaches the column checks (and the errors file) instead of stopping the
read; the columns carried to the output get fixed types from the first block of the input
(:func:`conform`), so that every chunk's part has the same schema.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError

CSV, PARQUET, JSONL = "csv", "parquet", "jsonl"
FORMATS = {
    ".csv": CSV,
    ".parquet": PARQUET,
    ".pq": PARQUET,
    ".jsonl": JSONL,
    ".ndjson": JSONL,
}
READ_BLOCK_BYTES = 4 << 20  # CSV blocks read at a time
JSON_LINES_PER_BLOCK = 10_000
INFER_ROWS = 2_000  # rows of the first block that fix the carried columns' types


class BatchInputError(NbdeployError):
    """The input cannot be read: missing, empty, of an unknown kind, or malformed."""


@dataclass(frozen=True)
class InputFile:
    path: str
    format: str
    size: int
    mtime_ns: int

    def fingerprint(self) -> list[Any]:
        return [self.path, self.size, self.mtime_ns]


@dataclass
class Chunk:
    """``rows`` input rows, the first of which is the input's data row ``first_row``."""

    index: int
    first_row: int
    table: Any  # pyarrow.Table


def resolve_inputs(spec: str | os.PathLike[str]) -> list[InputFile]:
    """The input files named by ``spec`` (a file, a folder or a glob), in order."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
        if not found:
            raise BatchInputError(
                f"the folder {path} has no input files",
                "put .csv, .parquet or .jsonl files in it, or name a file",
            )
    elif path.is_file():
        found = [path]
    elif glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(os.path.expanduser(text)) if Path(p).is_file())
        if not found:
            raise BatchInputError(f"no file matches {text}", "check the pattern and the folder")
    else:
        raise BatchInputError(
            f"the input {text} does not exist", "give a CSV, Parquet or JSON Lines file, a folder"
        )
    files = []
    for item in found:
        kind = FORMATS.get(item.suffix.lower())
        if kind is None:
            raise BatchInputError(
                f"the input {item} is neither CSV, Parquet nor JSON Lines",
                "name files ending in .csv, .parquet, .pq, .jsonl or .ndjson",
            )
        stat = item.stat()
        files.append(InputFile(str(item.resolve()), kind, stat.st_size, stat.st_mtime_ns))
    if len({f.format for f in files}) > 1:
        raise BatchInputError(
            "the input mixes file kinds: " + ", ".join(sorted({f.format for f in files})),
            "score one kind of file per job",
        )
    return files


def _unreadable(file: InputFile, error: BaseException) -> BatchInputError:
    return BatchInputError(
        f"cannot read {file.path} as {file.format}: {type(error).__name__}: {error}",
        "check that the file is complete and of the kind its name says",
    )


def input_columns(files: list[InputFile]) -> tuple[list[str], Any]:
    """The input's column names and the types of the columns as the first block has them
    (a pyarrow schema): read before any work, so that a broken file fails at once."""
    import pyarrow as pa

    first = files[0]
    names: list[str] | None = None
    schema: Any = None
    for file in files:
        try:
            if file.format == PARQUET:
                import pyarrow.parquet as pq

                file_schema = pq.read_schema(file.path)
                columns = list(file_schema.names)
                if file is first:
                    schema = file_schema
            elif file.format == CSV:
                import pyarrow.csv as pacsv

                reader = pacsv.open_csv(
                    file.path, read_options=pacsv.ReadOptions(block_size=1 << 16)
                )
                columns = list(reader.schema.names)
                if file is first:
                    schema = reader.schema
            else:
                table = _json_table(_first_json_rows(file.path, INFER_ROWS), None)
                columns = list(table.column_names)
                if file is first:
                    schema = table.schema
        except BatchInputError:
            raise
        except (OSError, ValueError, pa.ArrowException) as error:
            raise _unreadable(file, error) from None
        if not columns:
            raise BatchInputError(f"{file.path} has no columns", "check the file")
        if names is None:
            names = columns
        elif set(columns) != set(names):
            raise BatchInputError(
                f"{file.path} has the columns {columns}, the first input file {names}",
                "score files with the same columns in one job",
            )
    assert names is not None
    return names, schema


def count_rows(files: list[InputFile]) -> int | None:
    """The number of data rows when it is cheap to know (Parquet's metadata), else None."""
    if any(f.format != PARQUET for f in files):
        return None
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f.path).metadata.num_rows for f in files)


def iter_chunks(files: list[InputFile], names: list[str], chunk_rows: int) -> Iterator[Chunk]:
    """The input's rows, across files, in chunks of ``chunk_rows`` rows (pyarrow Tables
    with the columns ``names``)."""
    import pyarrow as pa

    pending: list[Any] = []
    pending_rows = 0
    index = 0
    first_row = 0
    for file in files:
        try:
            for batch in _batches(file, names):
                table = (
                    pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
                )
                pending.append(table)
                pending_rows += table.num_rows
                while pending_rows >= chunk_rows:
                    merged = _concat(pending)
                    yield Chunk(index, first_row, merged.slice(0, chunk_rows))
                    index += 1
                    first_row += chunk_rows
                    rest = merged.slice(chunk_rows)
                    pending = [rest] if rest.num_rows else []
                    pending_rows = rest.num_rows
        except BatchInputError:
            raise
        except (OSError, ValueError, pa.ArrowException) as error:
            raise _unreadable(file, error) from None
    if pending_rows:
        yield Chunk(index, first_row, _concat(pending))


def _concat(tables: list[Any]) -> Any:
    import pyarrow as pa

    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def _batches(file: InputFile, names: list[str]) -> Iterator[Any]:
    import pyarrow as pa

    if file.format == PARQUET:
        import pyarrow.parquet as pq

        # Without pre-buffering: with it, pyarrow keeps every row group read so far until
        # the file is closed, and memory follows the file instead of the chunk.
        parquet = pq.ParquetFile(file.path, pre_buffer=False)
        for batch in parquet.iter_batches(batch_size=16_384, columns=names):
            yield batch
        return
    if file.format == CSV:
        import pyarrow.csv as pacsv

        reader = pacsv.open_csv(
            file.path,
            read_options=pacsv.ReadOptions(block_size=READ_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names}, strings_can_be_null=True
            ),
        )
        for batch in reader:
            yield batch.select(names)
        return
    rows: list[Any] = []
    for record in _json_records(file.path):
        rows.append(record)
        if len(rows) >= JSON_LINES_PER_BLOCK:
            yield _json_table(rows, names)
            rows = []
    if rows:
        yield _json_table(rows, names)


def _json_records(path: str) -> Iterator[dict[str, Any]]:
    """The objects of a JSON Lines file, one per non-blank line; an error naming the line
    that is not one."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise BatchInputError(
                    f"{path}, line {number}: not JSON ({error})",
                    "each line of a JSON Lines file holds one JSON object",
                ) from None
            if not isinstance(record, dict):
                raise BatchInputError(
                    f"{path}, line {number}: a {type(record).__name__}, not an object",
                    "each line of a JSON Lines file holds one JSON object {column: value}",
                )
            yield record


def _first_json_rows(path: str, count: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for record in _json_records(path):
        rows.append(record)
        if len(rows) >= count:
            break
    if not rows:
        raise BatchInputError(f"{path} has no rows", "check the file")
    return rows


def _json_table(rows: list[dict[str, Any]], names: list[str] | None) -> Any:
    """Records as a table; a column whose values pyarrow cannot type together (a number
    and a text) is kept as text, for the column checks to judge."""
    import pyarrow as pa

    if names is None:
        names = list(dict.fromkeys(key for row in rows for key in row))
    arrays = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            arrays[name] = pa.array(
                [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values],
                type=pa.string(),
            )
    return pa.table(arrays)


def conform(array: Any, target: Any) -> Any:
    """``array`` as the type ``target``; a value that does not convert becomes null (a
    carried column keeps its type in every chunk; the feature checks see the raw value)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type == target:
        return array
    try:
        return pc.cast(array, target)
    except (pa.ArrowException, TypeError, ValueError):
        pass
    converted = []
    for value in array.to_pylist():
        try:
            converted.append(pc.cast(pa.array([value]), target)[0].as_py())
        except (pa.ArrowException, TypeError, ValueError):
            converted.append(None)
    return pa.array(converted, type=target)
