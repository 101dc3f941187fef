"""One pod of a batch scoring Job on Kubernetes: ``python -m nbdeploy.batching.pod``.

``nbdeploy k8s NAME --batch INPUT --output OUTPUT`` writes an Indexed Job whose pods run
this module, each with its partition's number (``--part env``: Kubernetes'
JOB_COMPLETION_INDEX). A pod scores its partition of INPUT with the version folder its
image holds (``nbdeploy image build NAME --batch`` puts it at ``/home/nbdeploy/version``)
and writes into the folder OUTPUT:

- ``part-KKKKK.parquet`` (``.csv`` or ``.jsonl`` when OUTPUT's name ends so): the kept
  columns and the predictions of partition K, in input order;
- ``_errors-KKKKK.jsonl``: its failed rows (file, row in that file, column, reason);
  named with a leading ``_``, as Spark names its ``_SUCCESS``, so that readers of the
  folder as a dataset skip it.

Both are written atomically (a temporary file, then a rename), the errors file first: a
pod killed or retried never leaves half a part, and a part that exists is complete. The
folder of parts is read as one table, as Spark's and Dask's outputs are
(``pandas.read_parquet(OUTPUT)`` or ``pyarrow.dataset.dataset(OUTPUT)``; the hidden
scratch entries of a pod at work are skipped by both).

Partitions (``--partitions N``): the input's files, sorted as ``nbdeploy batch`` orders
them, in N contiguous groups (a file per pod when N is the number of files); a single
Parquet file's row groups in N contiguous ranges; a single CSV or JSON Lines file is one
partition (split it into files to score it in several pods). A partition with nothing in
it (more partitions than files or row groups) writes an empty errors file and no part.

It reuses the pieces of ``nbdeploy batch`` (:mod:`.inputs`, :mod:`.columns`,
:mod:`.scoring`, :mod:`.output`), and needs neither nbdeploy's state store, nor MLflow,
Jupyter or BentoML's server: only the version folder, pyarrow, pandas and the version's
own requirements. Exit codes: 0 done, 2 bad input or options (retrying cannot help),
3 more failed rows than ``--max-error-share`` (the part and the errors are written), 1
anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError

JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in the pods of an Indexed Job
VERSION_DIR_ENV = "NBDEPLOY_VERSION_DIR"  # set by the batch image
IMAGE_VERSION_DIR = "/home/nbdeploy/version"  # where the batch image holds the version
DEFAULT_CHUNK_ROWS = 50_000
DEFAULT_MAX_ERROR_SHARE = 0.01
TOO_MANY_FAILED_EXIT = 3
PART_DIGITS = 5


class PodError(NbdeployError):
    """A pod's options or input are wrong: retrying cannot help (exit 2)."""


@dataclass(frozen=True)
class Piece:
    """What a partition reads of one input file: all of it, or row groups [first, last)."""

    file: Any  # nbdeploy.batching.inputs.InputFile
    row_groups: tuple[int, int] | None = None


def part_name(index: int, kind: str) -> str:
    extension = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}[kind]
    return f"part-{index:0{PART_DIGITS}d}.{extension}"


def errors_name(index: int) -> str:
    return f"_errors-{index:0{PART_DIGITS}d}.jsonl"


def output_kind(output: str) -> str:
    """The parts' kind from OUTPUT's name: .parquet/.pq, .csv, .jsonl/.ndjson; a name
    without an extension gets Parquet parts."""
    from nbdeploy.batching.output import output_format

    if not Path(output).suffix:
        return "parquet"
    return output_format(Path(output))


def part_index(text: str) -> int:
    """``--part``: a number from 0, or ``env`` for JOB_COMPLETION_INDEX."""
    raw = os.environ.get(JOB_INDEX_ENV, "") if text == "env" else text
    if text == "env" and not raw:
        raise PodError(
            f"--part env: {JOB_INDEX_ENV} is not set (Kubernetes sets it in the pods of an "
            "Indexed Job)",
            "give the partition's number instead, e.g. --part 0",
        )
    if not raw.strip().isdigit():
        shown = f"{JOB_INDEX_ENV}={raw!r}" if text == "env" else repr(text)
        raise PodError(f"--part {shown}: a partition's number, from 0, or env")
    return int(raw)


def split_evenly(count: int, parts: int, index: int) -> tuple[int, int]:
    """Items [first, last) of partition ``index`` when ``count`` items go into ``parts``
    contiguous partitions whose sizes differ by at most one."""
    return index * count // parts, (index + 1) * count // parts


def partition_pieces(files: list[Any], partitions: int, index: int) -> list[Piece]:
    """What partition ``index`` of ``partitions`` reads (see the module docstring)."""
    from nbdeploy.batching.inputs import PARQUET

    if len(files) == 1:
        single = files[0]
        if single.format != PARQUET:
            if partitions > 1:
                raise PodError(
                    f"the input {single.path} is one {single.format.upper()} file: it is one "
                    f"partition, not {partitions}",
                    "split it into files in a folder (one partition per file or group of "
                    "files), write it as Parquet, or use --partitions 1",
                )
            return [Piece(single)]
        import pyarrow.parquet as pq

        groups = pq.ParquetFile(single.path).metadata.num_row_groups
        first, last = split_evenly(groups, partitions, index)
        return [Piece(single, (first, last))] if last > first else []
    first, last = split_evenly(len(files), partitions, index)
    return [Piece(file) for file in files[first:last]]


def piece_chunks(piece: Piece, names: list[str], chunk_rows: int) -> Iterator[Any]:
    """The piece's rows in chunks; ``first_row`` counts from the start of the piece's file."""
    from nbdeploy.batching.inputs import Chunk, iter_chunks

    if piece.row_groups is None:
        yield from iter_chunks([piece.file], names, chunk_rows)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(piece.file.path, pre_buffer=False)  # memory follows the chunk
    first, last = piece.row_groups
    row = sum(parquet.metadata.row_group(g).num_rows for g in range(first))
    batches = parquet.iter_batches(
        batch_size=chunk_rows, row_groups=list(range(first, last)), columns=names
    )
    for number, batch in enumerate(batches):
        yield Chunk(number, row, pa.Table.from_batches([batch]))
        row += batch.num_rows


def _inside(path: str, root: str | None, option: str) -> Path:
    resolved = Path(path).expanduser().resolve()
    if root is not None and not resolved.is_relative_to(Path(root).resolve()):
        raise PodError(f"{option} {path} is outside {root}", "give a path under the claim's mount")
    return resolved


def score_partition(
    version_dir: str,
    input: str,
    output: str,
    *,
    index: int,
    partitions: int,
    root: str | None = None,
    keep: list[str] | None = None,
    features: list[str] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> dict[str, Any]:
    """Score partition ``index`` of ``partitions`` of ``input`` into the folder ``output``;
    a summary (rows in, out and failed, the files written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nbdeploy.batching import monitoring
    from nbdeploy.batching.columns import plan_columns
    from nbdeploy.batching.inputs import input_columns, resolve_inputs
    from nbdeploy.batching.output import final_schema, write_errors, write_output
    from nbdeploy.batching.scoring import score_chunk
    from nbdeploy.service.runtime import MANIFEST, read_manifest

    started = time.monotonic()
    if partitions < 1 or not 0 <= index < partitions:
        raise PodError(
            f"--part {index}: the Job has {partitions} partitions, 0 to {partitions - 1}"
        )
    if chunk_rows < 1:
        raise PodError(f"--chunk-rows must be a whole number >= 1, got {chunk_rows}")
    folder = Path(version_dir)
    if not (folder / MANIFEST).is_file():
        raise PodError(
            f"--version-dir {version_dir}: no {MANIFEST} there (not a version folder)",
            f"run the image that nbdeploy image build NAME --batch makes (it holds the version "
            f"at {IMAGE_VERSION_DIR}), or give a version's folder",
        )
    kind = output_kind(output)
    source = _inside(input, root, "--input")
    target = _inside(output, root, "--output")
    files = resolve_inputs(source)
    names, input_schema = input_columns(files)
    manifest = read_manifest(folder)
    profile = monitoring.load_profile(str(folder))
    plan = plan_columns(
        service_dir=str(folder),
        manifest=manifest,
        input_names=names,
        input_schema=input_schema,
        features=features,
        keep=keep,
        profile_columns=list(profile.columns) if profile is not None else None,
    )
    wanted = set(plan.kept) | set(plan.features)
    read_names = [name for name in input_schema.names if name in wanted]
    pieces = partition_pieces(files, partitions, index)
    if target.exists() and not target.is_dir():
        raise PodError(f"--output {output} is a file", "the Job's output is a folder of parts")
    target.mkdir(parents=True, exist_ok=True)
    scratch = target / f".part-{index:0{PART_DIGITS}d}.chunks"
    shutil.rmtree(scratch, ignore_errors=True)  # a killed attempt's
    scratch.mkdir()
    rows_in = 0
    error_lines: list[str] = []
    spilled: list[Path] = []
    try:
        for piece in pieces:
            label = _label(piece.file.path, root)
            for chunk in piece_chunks(piece, read_names, chunk_rows):
                scored = score_chunk(plan, chunk.index, chunk.first_row, chunk.table)
                rows_in += scored.rows_in
                path = scratch / f"{len(spilled):08d}.parquet"
                pq.write_table(scored.table, path)
                spilled.append(path)
                error_lines += [
                    json.dumps({"file": label, **e}, default=str) for e in scored.errors
                ]
        errors_path = target / errors_name(index)
        rows_failed = write_errors(errors_path, iter(error_lines))
        part_path: Path | None = None
        rows_out = 0
        if spilled:
            kept = pa.schema([pa.field(n, plan.kept_types[n]) for n in plan.kept])
            schema = final_schema([pq.read_schema(p) for p in spilled], kept)
            part_path = target / part_name(index, kind)
            rows_out = write_output(part_path, kind, schema, (pq.read_table(p) for p in spilled))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "part": index,
        "partitions": partitions,
        "files": [_label(piece.file.path, root) for piece in pieces],
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_failed": rows_failed,
        "output": str(part_path) if part_path else None,
        "errors": str(errors_path),
        "seconds": round(time.monotonic() - started, 3),
    }


def _label(path: str, root: str | None) -> str:
    if root is not None:
        try:
            return str(Path(path).relative_to(Path(root).resolve()))
        except ValueError:
            pass
    return path


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nbdeploy.batching.pod",
        description="One pod of the batch scoring Job that nbdeploy k8s NAME --batch writes: "
        "score partition K of INPUT with the version folder and write OUTPUT/part-KKKKK.* "
        "and OUTPUT/_errors-KKKKK.jsonl atomically. Partitions: INPUT's files, sorted, in "
        "--partitions contiguous groups; a single Parquet file's row groups in contiguous "
        "ranges; a single CSV or JSON Lines file is one partition.",
    )
    parser.add_argument("--input", required=True, help="a file, a folder or a glob")
    parser.add_argument(
        "--output", required=True, help="a folder of parts (.parquet, .csv or .jsonl name)"
    )
    parser.add_argument(
        "--part",
        required=True,
        metavar="K|env",
        help="the partition, or env (JOB_COMPLETION_INDEX)",
    )
    parser.add_argument("--partitions", type=int, default=1, metavar="N", help="default 1")
    parser.add_argument(
        "--version-dir",
        default=os.environ.get(VERSION_DIR_ENV),
        metavar="DIR",
        help=f"the version folder (default ${VERSION_DIR_ENV}, set by the batch image)",
    )
    parser.add_argument("--root", metavar="DIR", help="refuse paths outside this folder")
    parser.add_argument("--keep", nargs="+", metavar="COL", help="default: every input column")
    parser.add_argument("--features", nargs="+", metavar="COL")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, metavar="N")
    parser.add_argument(
        "--max-error-share",
        type=float,
        default=DEFAULT_MAX_ERROR_SHARE,
        metavar="SHARE",
        help=f"exit {TOO_MANY_FAILED_EXIT} above this share of failed rows",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if not args.version_dir:
            raise PodError(f"no version folder: give --version-dir DIR or set {VERSION_DIR_ENV}")
        summary = score_partition(
            args.version_dir,
            args.input,
            args.output,
            index=part_index(args.part),
            partitions=args.partitions,
            root=args.root,
            keep=args.keep,
            features=args.features,
            chunk_rows=args.chunk_rows,
        )
    except NbdeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(json.dumps(summary), flush=True)
    share = summary["rows_failed"] / summary["rows_in"] if summary["rows_in"] else 0.0
    if share > args.max_error_share:
        print(
            f"error: {summary['rows_failed']} of {summary['rows_in']} rows failed "
            f"({share:.2%}), more than --max-error-share {args.max_error_share:g}: see "
            f"{summary['errors']}",
            file=sys.stderr,
        )
        return TOO_MANY_FAILED_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
