"""Where batches run: a Dask ``LocalCluster`` started here, or a cluster already running.

The same code path serves both (:func:`dask_client`): a batch is submitted to the client with its
cells, the reference is scattered to every worker once, and results come back as they finish.
Dask and distributed are imported only when a cluster is asked for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from napari_spatial_impute._errors import InputError, first_line

#: Seconds to wait for a scheduler named by address.
CONNECT_TIMEOUT_S = 10


def parse_memory(value: str | int | float | None) -> int | None:
    """``"4GB"``, ``"3.5 GiB"``, ``4e9`` -> bytes; ``None``/``"auto"`` -> ``None`` (Dask's share)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    from dask.utils import parse_bytes

    try:
        n = int(parse_bytes(value)) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        raise InputError(
            f"memory limit {value!r} is not a size; write it as e.g. 4GB, 3.5GiB or 500MB."
        ) from None
    if n <= 0:
        raise InputError(f"memory limit {value!r} must be positive (e.g. 4GB).")
    return n


def default_workers(n_batches: int) -> int:
    """Workers of a local cluster when none are asked for: one per core, at most one per batch."""
    return max(1, min(os.cpu_count() or 1, n_batches))


@contextmanager
def dask_client(
    workers: int | None = None,
    memory_limit: int | None = None,
    scheduler: Any = None,
) -> Iterator[Any]:
    """A ``distributed.Client``: on ``scheduler`` (an address or a Client), else on a new
    ``LocalCluster`` of ``workers`` single-threaded processes with ``memory_limit`` bytes each.

    A scheduler that does not answer within :data:`CONNECT_TIMEOUT_S` seconds is an
    :class:`InputError` (one line, before any work).
    """
    from distributed import Client, LocalCluster

    if scheduler is not None and not isinstance(scheduler, str):
        yield scheduler  # a Client the caller owns
        return
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(
                f"the Dask scheduler {scheduler!r} does not answer ({first_line(exc)}); start it "
                "(dask scheduler, then dask worker ADDRESS) or leave out --scheduler to run a "
                "local cluster."
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=max(1, int(workers or 1)),
        threads_per_worker=1,
        processes=True,
        memory_limit=memory_limit if memory_limit is not None else "auto",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def worker_memory_limits(client: Any) -> list[int]:
    """Each worker's memory limit in bytes (0: none)."""
    info = (
        client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    )
    return [int(w.get("memory_limit") or 0) for w in info.get("workers", {}).values()]


def _takes_n_workers(client: Any) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False
