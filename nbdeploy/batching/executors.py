"""Where a batch job's chunks are scored: a pool of local processes, or a Dask cluster.

Both take chunks from an iterator and hand back :class:`~nbdeploy.batching.scoring.ChunkResult`
objects as they finish, with at most ``in_flight`` chunks read but not yet handed back
(backpressure: the input is not read faster than it is scored, so memory follows the
chunk size). Each worker process loads the version once
(:func:`nbdeploy.batching.scoring.loaded_version`).

``local``: a process per core (``--workers``), started with the ``forkserver`` context
(``spawn`` where there is none): never forked from a parent that may run threads (a
kernel, the CLI's progress). ``dask``: a task per chunk on the cluster the pipeline's Dask
executor starts or connects to (:mod:`nbdeploy.pipeline.executors`: a LocalCluster of
processes, or ``--scheduler tcp://HOST:PORT``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbdeploy.batching.columns import ScoringPlan
    from nbdeploy.batching.inputs import Chunk
    from nbdeploy.batching.scoring import ChunkResult

LOCAL, DASK = "local", "dask"
TASK_TIMEOUT_S = 600.0  # the longest a chunk may take


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def score_locally(
    plan: ScoringPlan, chunks: Iterator[Chunk], workers: int, in_flight: int
) -> Iterator[ChunkResult]:
    """Score ``chunks`` in a pool of ``workers`` processes."""
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    from nbdeploy.batching.scoring import score_chunk, warm

    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_context(),
        initializer=_safe_warm,
        initargs=(warm, plan.service_dir),
    )
    pending: set[Future[ChunkResult]] = set()
    finished_cleanly = False
    try:
        source = iter(chunks)
        exhausted = False
        while True:
            while not exhausted and len(pending) < in_flight:
                chunk = next(source, None)
                if chunk is None:
                    exhausted = True
                    break
                pending.add(
                    pool.submit(score_chunk, plan, chunk.index, chunk.first_row, chunk.table)
                )
            if not pending:
                break
            done, pending = wait(pending, timeout=TASK_TIMEOUT_S, return_when=FIRST_COMPLETED)
            for future in done:
                yield _result_of(future)
        finished_cleanly = True
    finally:
        for future in pending:
            future.cancel()
        if finished_cleanly:
            pool.shutdown(wait=True)
        else:
            _stop_pool(pool)


def _result_of(future: Any) -> ChunkResult:
    """A chunk's result; a worker that died says what may have killed it."""
    from concurrent.futures.process import BrokenProcessPool

    from nbdeploy.batching import BatchFailedError

    try:
        result: ChunkResult = future.result()
    except BrokenProcessPool:
        raise BatchFailedError(
            "a worker process of the batch job ended abruptly (killed, or out of memory)",
            "lower --chunk-rows or --workers if memory is short; from a Python script, call "
            'nbdeploy.batch under `if __name__ == "__main__":` (each worker process imports '
            "the script, as with any multiprocessing); finished chunks are kept: run it again",
        ) from None
    return result


def _safe_warm(warm: Callable[[str], None], service_dir: str) -> None:
    """Load the version ahead of the first chunk; a failure shows on that chunk instead
    (an initializer that raises would break the pool without saying why)."""
    with contextlib.suppress(Exception):
        warm(service_dir)


def _stop_pool(pool: Any) -> None:
    """End the pool's processes now (an error or Ctrl-C): they may be mid-chunk."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(timeout=5)


def score_on_dask(
    plan: ScoringPlan,
    chunks: Iterator[Chunk],
    scheduler: str | None,
    workers: int | None,
    in_flight: int | None,
    notify: Callable[[str], None],
) -> Iterator[ChunkResult]:
    """Score ``chunks`` as tasks of a Dask cluster (a local one when ``scheduler`` is None)."""
    from nbdeploy.pipeline.executors import ExecutorSpec, start_executor

    executor = start_executor(ExecutorSpec(DASK, scheduler), workers, notify=notify)
    with executor:
        client = getattr(executor, "client")  # noqa: B009  (waits for a local cluster)
        from nbdeploy.batching.scoring import score_chunk

        limit = in_flight or 2 * max(1, getattr(executor, "parallel", 1))
        finished: queue.Queue[Any] = queue.Queue()
        pending: set[Any] = set()
        source = iter(chunks)
        try:
            while True:
                while len(pending) < limit:
                    chunk = next(source, None)
                    if chunk is None:
                        break
                    future = _submit(client, score_chunk, plan, chunk)
                    future.add_done_callback(finished.put)
                    pending.add(future)
                if not pending:
                    break
                future = finished.get(timeout=TASK_TIMEOUT_S)
                pending.discard(future)
                result = future.result(timeout=TASK_TIMEOUT_S)
                future.release()
                yield result
        finally:
            for future in pending:
                with contextlib.suppress(Exception):
                    future.cancel()


def _submit(client: Any, function: Any, plan: ScoringPlan, chunk: Chunk) -> Any:
    return client.submit(
        function,
        plan,
        chunk.index,
        chunk.first_row,
        chunk.table,
        pure=False,
        key=f"nbdeploy-batch-{os.getpid()}-{chunk.index}-{id(chunk)}",
    )
