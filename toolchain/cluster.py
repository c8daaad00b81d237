"""Cells on a Dask distributed cluster: `edgeseq build --scheduler tcp://HOST:PORT`.

edgeseq does not schedule: it submits one task per cell to a cluster the team already runs
(`dask scheduler`, `dask worker` processes with edgeseq installed and the checkpoints at the
same paths). Each worker builds its cell into the shared cache (an s3:// store, or a directory
every worker sees) and returns the cell's row naming itself; the client then fetches each
artifact from the cache (hash-checked) into the output directory. A worker that dies mid-cell
(killed, out of memory) loses its task to the scheduler, which runs it on another worker (up to
its `distributed.scheduler.allowed-failures`); the dead worker's half-built cell was never
published, so it leaves no entry.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import InputError

ADDRESS = re.compile(r"^(tcp|tls|ws|wss)://[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
CONNECT_TIMEOUT_S = 5
RETRIES = 2  # a cell whose task raises (run_cell never does; its worker's death is not a raise) runs again


@contextmanager
def quiet() -> Iterator[None]:
    """Dask logs connection attempts, worker losses and retries at WARNING and above: not for users
    (the build's own lines say what happened)."""
    log = logging.getLogger("distributed")
    old = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(old)


def connect(address: str) -> Any:
    """A Client of the scheduler at `address`, which must have a worker: else one line."""
    if not ADDRESS.match(address):
        raise InputError(f"--scheduler {address}: expected tcp://HOST:PORT")
    try:
        from distributed import Client
    except ImportError:
        raise InputError("--scheduler: dask distributed is not installed (pip install 'edgeseq[scale]')") from None
    with quiet():
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise InputError(f"--scheduler {address}: cannot reach the Dask scheduler "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'timed out'})") from None
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            client.close()
            raise InputError(f"--scheduler {address}: the scheduler has no workers") from None
    return client


def _run_on_worker(args: tuple[Any, ...]) -> dict[str, Any]:
    """One cell on a worker: built into the shared cache, no artifact copy (the client fetches it)."""
    from distributed import get_worker

    from .build import run_cell

    w = get_worker()
    row = run_cell(*args)
    row["worker"] = str(w.name) if w.name is not None else w.address
    row["worker_address"] = w.address
    return row


def run_cells(client: Any, args: list[tuple[Any, ...]], done: Callable[[int, dict[str, Any]], None]) -> None:
    """Submit every cell, call done(index, row) as each completes. A cell whose task is lost more
    often than the scheduler allows becomes a failed row, not a crash."""
    from distributed import as_completed

    from .build import fail

    with quiet():
        run = uuid.uuid4().hex[:12]
        futures = {client.submit(_run_on_worker, a, pure=False, retries=RETRIES, key=f"edgeseq-cell-{run}-{i}"): i
                   for i, a in enumerate(args)}
        for fut in as_completed(list(futures), loop=client.loop):
            i = futures[fut]
            try:
                row = fut.result()
            except Exception as e:  # KilledWorker: the cell's workers kept dying
                row = {"cache_hit": False}
                fail(row, e)
            done(i, row)
