"""Where batches run: a Dask ``LocalCluster`` started here, or a cluster already running.

The same code path serves both (:func:`dask_client`): a batch is submitted to the client with its
cells, the reference is scattered to every worker once, and results come back as they finish.
The options are checked before any work (:func:`check_cluster_options`): a memory limit that is a
finite size and sizes some worker, a scheduler address whose scheme Dask can connect with here
(:func:`check_scheduler`); a local cluster has at most one worker per batch and per core
(:func:`local_workers`). Dask and distributed are imported only when a cluster is asked for.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from numbers import Integral
from typing import Any

from napari_spatial_impute._errors import InputError, first_line

#: Seconds to wait for a scheduler named by address.
CONNECT_TIMEOUT_S = 10


def parse_memory(value: str | int | float | None) -> int | None:
    """``"4GB"``, ``"3.5 GiB"``, ``4e9`` -> bytes; ``None``/``"auto"`` -> ``None`` (Dask's share).

    Anything else is an :class:`InputError` (one line): text that is not a size, a size that is
    not finite (``1e400``, ``inf``, ``nan``) and a size that is not positive.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    from dask.utils import parse_bytes

    try:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, str):
            n = int(parse_bytes(value))
        elif not math.isfinite(float(value)):
            raise ValueError(value)
        else:
            n = int(value)
    except (ValueError, TypeError, OverflowError):  # OverflowError: 1e400 is infinite
        raise InputError(
            f"memory limit {value!r} is not a size; write it as e.g. 4GB, 3.5GiB or 500MB."
        ) from None
    if n <= 0:
        raise InputError(f"memory limit {value!r} must be positive (e.g. 4GB).")
    return n


def check_cluster_options(
    workers: int | None, scheduler: Any = None, memory_limit: str | int | float | None = None
) -> None:
    """Refuse, before any work, cluster options that cannot work or would be ignored.

    ``workers`` must be a whole number, 0 or more (0: the batches run in this process, ``None``:
    one per core); a memory limit sizes the workers of a local cluster, so it is refused with
    ``workers=0`` and with a ``scheduler`` (whose cluster has its own workers); a scheduler
    address must use a scheme that Dask can connect with here (:func:`check_scheduler`).
    """
    limit = parse_memory(memory_limit)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, Integral)):
        raise InputError(f"--workers must be a whole number (0: this process), got {workers!r}.")
    if workers is not None and workers < 0:
        raise InputError(f"--workers must be 0 (this process) or more, got {workers}.")
    if scheduler is not None:
        check_scheduler(scheduler)
        if limit is not None:
            raise InputError(
                "--memory-limit sizes the workers of a local cluster; a --scheduler's cluster "
                "has its own workers: leave out --memory-limit."
            )
    elif workers == 0 and limit is not None:
        raise InputError(
            "--memory-limit sizes the workers of a local cluster; with --workers 0 the batches "
            "run in this process: leave out --memory-limit, or give --workers 1 or more."
        )


def scheduler_schemes() -> list[str]:
    """The address schemes (``tcp``, ``tls``, ...) this machine's ``distributed`` can connect
    with: those of its comm registry (and plugins) whose connector can be made (``ucx``, left
    registered after its removal, cannot)."""
    from importlib.metadata import entry_points

    from distributed.comm.registry import backends, get_backend

    names = set(backends) | {ep.name for ep in entry_points(group="distributed.comm.backends")}
    usable = []
    for name in sorted(names):
        try:
            get_backend(name).get_connector()
        except Exception:  # a backend that cannot connect (removed, or its library missing)
            continue
        usable.append(name)
    return usable


def check_scheduler(scheduler: Any) -> None:
    """Refuse a scheduler address whose scheme Dask cannot connect with here (one line naming
    the schemes it can); a ``distributed.Client`` is taken as it is."""
    if not isinstance(scheduler, str):
        return
    import dask

    text = scheduler.strip()
    scheme = (
        text.split("://", 1)[0].lower()
        if "://" in text
        else str(dask.config.get("distributed.comm.default-scheme", "tcp"))
    )
    schemes = scheduler_schemes()
    if scheme not in schemes:
        names = ", ".join(f"{s}://" for s in schemes)
        raise InputError(
            f"--scheduler {scheduler!r}: Dask here cannot connect with {scheme}://; give the "
            f"scheduler's address with one of {names} (e.g. tcp://host:8786)."
        )


def local_workers(asked: int | None, n_batches: int) -> tuple[int, str]:
    """Worker processes of a local cluster for ``n_batches`` batches: ``asked`` (``None``: one per
    core), at most one per batch and one per core (``os.cpu_count()``); with the one-line note
    that says so when that is fewer than asked (``""`` otherwise)."""
    cores = os.cpu_count() or 1
    n = max(1, min(cores, n_batches) if asked is None else min(int(asked), cores, n_batches))
    if asked is None or n >= asked:
        return n, ""
    return n, (
        f"--workers {asked} lowered to {n} (at most one per batch and one per core: "
        f"{n_batches} batch{'es' if n_batches != 1 else ''}, {cores} "
        f"core{'s' if cores != 1 else ''})."
    )


@contextmanager
def dask_client(
    workers: int | None = None,
    memory_limit: int | None = None,
    scheduler: Any = None,
) -> Iterator[Any]:
    """A ``distributed.Client``: on ``scheduler`` (an address or a Client), else on a new
    ``LocalCluster`` of ``workers`` single-threaded processes with ``memory_limit`` bytes each.

    A scheduler that does not answer within :data:`CONNECT_TIMEOUT_S` seconds, or whose address
    cannot be connected to (a bad host, port or scheme), is an :class:`InputError` (one line,
    before any work).
    """
    from distributed import Client, LocalCluster

    if scheduler is not None and not isinstance(scheduler, str):
        yield scheduler  # a Client the caller owns
        return
    if scheduler is not None:
        check_scheduler(scheduler)
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError, ValueError, TypeError, FutureWarning) as exc:
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
    from napari_spatial_impute.io.files import _SignalGuard

    before = _child_pids()
    with _SignalGuard() as guard:
        # Ctrl-C / SIGTERM while the cluster starts waits until it has started (a cluster stopped
        # half-way fails in distributed's exit handler with a traceback), then closes it
        guard.deferring = True
        cluster = LocalCluster(
            n_workers=max(1, int(workers or 1)),
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit if memory_limit is not None else "auto",
            dashboard_address=":0",  # any free port: no "port 8787 in use" note
            silence_logs=logging.CRITICAL,  # a batch's error is reported by the run, once
        )
    stopped = False
    try:
        guard.check()
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    except BaseException:
        stopped = True  # cancelled, interrupted or failed: the workers' work is of no use
        raise
    finally:
        if stopped:
            close_fast(cluster, before)
        else:
            cluster.close()


def _child_pids() -> set[int]:
    """The processes this process started with multiprocessing and that still run."""
    import multiprocessing

    return {p.pid for p in multiprocessing.active_children() if p.pid is not None}


def _worker_pids(cluster: Any) -> list[int]:
    """The process ids of a local cluster's workers (each Nanny's child process)."""
    pids = []
    for nanny in list(getattr(cluster, "workers", {}).values()):
        pid = getattr(getattr(getattr(nanny, "process", None), "process", None), "pid", None)
        if isinstance(pid, int):
            pids.append(pid)
    return pids


def _kill(pids: Iterable[int]) -> None:
    import signal

    for pid in pids:
        try:
            os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
        except OSError:  # already gone
            pass


def close_fast(cluster: Any, before: Iterable[int] = ()) -> None:
    """Close a local cluster whose work is no longer wanted, in about a second.

    Its worker processes are killed first (a worker busy in a batch can take many seconds to
    answer a polite close), then the scheduler and nannies close; distributed's reports of the
    workers' end ("lost scattered data", broken connections) are not logged. Processes started
    since ``before`` (the children of this process before the cluster) that are still there
    after the close are killed (multiprocessing's resource tracker is not one of them: it ends
    with this process).
    """
    quieted = []
    for name in ("distributed", "asyncio", "tornado"):
        logger = logging.getLogger(name)
        quieted.append((logger, logger.level))
        logger.setLevel(logging.CRITICAL + 1)
    try:
        _kill(_worker_pids(cluster))
        try:
            cluster.close()
        except Exception:  # closing a cluster whose workers were killed: nothing left to report
            pass
        _kill(_leftover(before))
    finally:
        for logger, level in quieted:
            logger.setLevel(level)


def _leftover(before: Iterable[int]) -> list[int]:
    return sorted(_child_pids() - set(before))


def worker_memory_limits(client: Any) -> list[int]:
    """Each worker's memory limit in bytes (0: none)."""
    return [int(w.get("memory_limit") or 0) for w in _workers(client).values()]


def count_workers(client: Any) -> int:
    """Worker processes of the client's cluster, all of them (``scheduler_info`` lists at most
    five unless asked for all)."""
    return len(_workers(client))


def _workers(client: Any) -> dict[str, Any]:
    info = (
        client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    )
    workers: dict[str, Any] = info.get("workers", {})
    return workers


def _takes_n_workers(client: Any) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False
