"""Unit: a batch job's output written while its chunks arrive (nbdeploy/batching/output.py).

Chunks are written in order whatever order they arrive in; chunks a killed run finished are
read from their parts; a chunk whose columns do not fit the first one's ends the stream and
the output is assembled from every part with the schema they all fit; either way the file
is the same as assembling the same parts at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nbdeploy.batching.output import OutputStream, final_schema, write_output

KEPT = pa.schema([pa.field("id", pa.int64())])


def chunk(start: int, predictions: list[Any]) -> pa.Table:
    ids = list(range(start, start + len(predictions)))
    return pa.table({"id": pa.array(ids, pa.int64()), "prediction": pa.array(predictions)})


def assembled(path: Path, kind: str, parts: list[pa.Table]) -> bytes:
    schema = final_schema([p.schema for p in parts], KEPT)
    write_output(path, kind, schema, iter(parts))
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl"])
def test_chunks_arriving_out_of_order_are_written_in_order(tmp_path: Path, kind: str) -> None:
    parts = [chunk(0, [1, 0]), chunk(2, [1, 1]), chunk(4, [0, 0]), chunk(6, [1, 0])]
    stream = OutputStream(tmp_path / f"out.{kind}", kind, KEPT, lambda i: parts[i])
    stream.finished_before = {1}  # finished by a run that was killed: read from its part
    for index in (2, 0, 3):
        stream.add(index, parts[index])
    rows = stream.finish(4, lambda: [p.schema for p in parts], iter(parts))
    assert rows == 8 and not stream.broken
    expected = assembled(tmp_path / f"expected.{kind}", kind, parts)
    assert (tmp_path / f"out.{kind}").read_bytes() == expected
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_a_chunk_that_does_not_fit_ends_the_stream_and_the_parts_are_assembled(
    tmp_path: Path,
) -> None:
    parts = [chunk(0, [1, 0]), chunk(2, [0.5, 1.5]), chunk(4, [1, 1])]
    stream = OutputStream(tmp_path / "out.parquet", "parquet", KEPT, lambda i: parts[i])
    for index, table in enumerate(parts):
        stream.add(index, table)
    assert stream.broken  # integers first, then floats
    rows = stream.finish(3, lambda: [p.schema for p in parts], iter(parts))
    assert rows == 6
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("prediction").type == pa.float64()
    assert table.column("prediction").to_pylist() == [1.0, 0.0, 0.5, 1.5, 1.0, 1.0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_abandoned_stream_leaves_no_file(tmp_path: Path) -> None:
    stream = OutputStream(tmp_path / "out.parquet", "parquet", KEPT, lambda i: None)
    stream.add(0, chunk(0, [1]))
    stream.abandon()  # the job failed or was interrupted
    assert list(tmp_path.iterdir()) == []
