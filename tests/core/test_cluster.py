"""Where batches run (core/cluster.py): sizes, scheduler addresses and worker counts are checked
before any work, each refusal in one line."""

from __future__ import annotations

import os

import pytest

from napari_spatial_impute._errors import InputError
from napari_spatial_impute.core import cluster
from napari_spatial_impute.core.cluster import (
    check_cluster_options,
    check_scheduler,
    count_workers,
    local_workers,
    parse_memory,
    scheduler_schemes,
)


@pytest.mark.parametrize(
    "value",
    ["1e400", "1e400GB", "inf", "nan", "-inf", "NaN GB", float("inf"), float("nan"), True, [4]],
)
def test_sizes_that_are_not_finite_numbers_are_one_line(value):
    with pytest.raises(InputError, match="is not a size") as info:
        parse_memory(value)
    assert "\n" not in str(info.value)


def test_sizes_are_bytes():
    assert parse_memory("4GB") == 4_000_000_000
    assert parse_memory(4e9) == 4_000_000_000
    assert parse_memory("auto") is None and parse_memory(None) is None
    with pytest.raises(InputError, match="must be positive"):
        parse_memory(0)


def test_a_memory_limit_that_sizes_no_worker_is_refused():
    with pytest.raises(InputError, match="with --workers 0 the batches run in this process"):
        check_cluster_options(0, None, "1MB")
    with pytest.raises(InputError, match="has its own workers"):
        check_cluster_options(None, "tcp://127.0.0.1:8786", "1MB")
    with pytest.raises(InputError, match="0 .this process. or more"):
        check_cluster_options(-1)
    with pytest.raises(InputError, match="whole number"):
        check_cluster_options(2.5)  # type: ignore[arg-type]
    check_cluster_options(0)
    check_cluster_options(0, None, "auto")  # Dask's default share: nothing to ignore
    check_cluster_options(2, None, "1MB")


def test_only_schemes_dask_can_connect_with_are_accepted():
    schemes = scheduler_schemes()
    assert {"tcp", "tls", "inproc"} <= set(schemes)
    assert "ucx" not in schemes  # registered by distributed, but removed: it cannot connect
    for address in ("tcp://host:8786", "TLS://host:8786", "host:8786", "inproc://x/1/2"):
        check_scheduler(address)
    for address in ("ucx://127.0.0.1:8786", "http://host:8786"):
        with pytest.raises(InputError, match="cannot connect with") as info:
            check_scheduler(address)
        assert "tcp://" in str(info.value) and "\n" not in str(info.value)
    check_scheduler(object())  # a Client is taken as it is


@pytest.mark.parametrize("error", [TypeError, ValueError, OSError, FutureWarning])
def test_an_address_that_fails_to_connect_is_one_line(monkeypatch, error):
    import distributed

    def refuse(*args, **kwargs):
        raise error("cannot connect\nsecond line")

    monkeypatch.setattr(distributed, "Client", refuse)
    with (
        pytest.raises(InputError, match="does not answer .cannot connect.;") as info,
        cluster.dask_client(scheduler="tcp://127.0.0.1:8786"),
    ):
        pass
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("asked", "n_batches", "cores", "expected", "lowered"),
    [
        (
            8,
            3,
            2,
            2,
            "--workers 8 lowered to 2 (at most one per batch and one per core: "
            "3 batches, 2 cores).",
        ),
        (8, 3, 16, 3, "--workers 8 lowered to 3"),
        (1000, 400, 16, 16, "--workers 1000 lowered to 16"),
        (2, 3, 16, 2, ""),
        (None, 3, 16, 3, ""),  # the default: one per core, at most one per batch, no note
        (None, 30, 16, 16, ""),
    ],
)
def test_workers_are_capped_at_the_cores_and_the_batches(
    monkeypatch, asked, n_batches, cores, expected, lowered
):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    n, note = local_workers(asked, n_batches)
    assert n == expected
    assert note.startswith(lowered) if lowered else note == ""


class _Client:
    """A client of a cluster of 8 workers (``scheduler_info`` lists 5 unless asked for all)."""

    def scheduler_info(self, n_workers: int = 5) -> dict:
        count = 8 if n_workers == -1 else min(n_workers, 8)
        return {"workers": {f"tcp://w{i}": {"memory_limit": 2**30} for i in range(count)}}


def test_every_worker_is_counted():
    assert count_workers(_Client()) == 8
    assert cluster.worker_memory_limits(_Client()) == [2**30] * 8


def test_a_stopped_run_kills_its_local_workers_and_logs_nothing(caplog):
    """Issue 25: a run stopped while its batches map (here a cancel: ``MappingCancelled`` out of
    the client's block) closes the local cluster by killing its busy workers first; no worker
    process is left once the block has ended, and distributed logs nothing of their end (lost
    scattered data, closed connections)."""
    import logging
    import time

    import numpy as np
    import psutil

    from napari_spatial_impute._errors import MappingCancelled

    caplog.set_level(logging.DEBUG)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    workers: list[psutil.Process] = []
    with pytest.raises(MappingCancelled), cluster.dask_client(workers=2) as client:
        data = client.scatter(np.zeros(1000), broadcast=True, hash=False)
        futures = [client.submit(time.sleep, 600, key=f"busy-{i}", pure=False) for i in range(2)]
        workers = [
            p
            for p in psutil.Process().children(recursive=True)
            if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline())
        ]
        assert len(workers) == 2 and data is not None and futures
        raise MappingCancelled("stopped while the batches mapped")
    _, alive = psutil.wait_procs(workers, timeout=60)  # a hang guard: they are gone at once
    assert not alive
    logged = [r for r in caplog.records if r.name.split(".")[0] in ("distributed", "asyncio")]
    assert not [r for r in logged if r.levelno >= logging.WARNING], [r.getMessage() for r in logged]
