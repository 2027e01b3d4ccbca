"""Map a whole atlas batch by batch and write one result file as the batches finish.

:func:`map_batches` is the notebook verb (the CLI's ``map --batch-key`` and the Map widget run
it too). Before any work it checks the settings, the output, the cluster options
(:func:`~napari_spatial_impute.core.cluster.check_cluster_options`), the reference, the batch
key, the genes to impute and whether the largest batch fits a worker. Batches then run in this process
(``workers=0``) or on Dask (:mod:`~napari_spatial_impute.core.cluster`): a ``LocalCluster`` of
``workers`` processes, or a running cluster (``scheduler``). The client reads each batch's
cells from the spatial file when it submits the batch (a backed ``.h5ad`` is never read whole),
keeps at most one batch per worker plus one in flight, and writes each result into the output as
it arrives (:class:`~napari_spatial_impute.io.batch_out.BatchResultWriter`): memory per process
stays bounded by the largest batch. With ``method="auto"`` (cells mode) the map is chosen once,
before any batch is submitted, on a seeded sample of cells drawn across the batches
(:func:`choose_once`), and every batch makes that map: every section of an atlas uses the same
map, and the file records the choice and its sample. A worker that dies mid-batch is replaced and its batch run
again (Dask reschedules it; a batch that kills ``allowed-failures`` workers stops the run with
what it needs); every batch is written exactly once. The file does not depend on the order the
batches finish in (:class:`~napari_spatial_impute.core.batch_collect.Collector`): its ``uns``, ``var`` and the categories of the per-cell
labels follow the batches' plan order, whatever the number of workers.
The output appears only when every batch is done (a temporary file renamed at the end); an
earlier output is never touched before that.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputError, InputWarning, MappingCancelled
from napari_spatial_impute.core.batch_collect import Collector
from napari_spatial_impute.core.batch_sample import (
    BatchChoice,
    calibrate_once,
    choose_once,
    draw_sample,
)
from napari_spatial_impute.core.batches import (
    Batch,
    BatchOutput,
    SpatialSource,
    map_batch,
    plan_batches,
    warm_up,
)
from napari_spatial_impute.core.engine.mapper import CancelFlag, is_cancelled
from napari_spatial_impute.core.engine.resources import GIB, estimate_ensemble_map
from napari_spatial_impute.core.settings import MappingSettings
from napari_spatial_impute.core.stopping import stops_on_signals

if TYPE_CHECKING:
    from napari_spatial_impute.core.uncertainty import Calibration

#: The map chosen once for a run is logged here (INFO) before any batch; the CLI prints it.
log = logging.getLogger(__name__)

PROJECTIONS = ("auto", "neighbours", "probabilistic", "argmax")
#: Seconds between two looks at the cancel flag while waiting for a cluster's results.
POLL_S = 0.1


@dataclass(frozen=True)
class BatchProgress:
    """One finished batch, as reported to ``progress``."""

    done: int
    total: int
    name: str
    n_cells: int
    status: str
    reason: str
    seconds: float
    worker: str

    def describe(self) -> str:
        """One line for a log or a status bar."""
        what = (
            f"mapped in {self.seconds:.1f} s"
            if self.status == "mapped"
            else f"SKIPPED: {self.reason}"
        )
        return f"batch {self.done}/{self.total} {self.name!r} ({self.n_cells:,} cells) {what}"


@dataclass
class BatchRun:
    """What :func:`map_batches` did: the file it wrote and one row per batch.

    ``choice`` is the map choice made once for every batch (``uns["spatial_impute"]["map_choice"]``
    of the file), ``None`` when the method was given; ``calibration`` the prediction intervals'
    calibration made once for every batch (:func:`calibrate_once`), ``None`` without intervals.
    """

    path: Path
    batches: pd.DataFrame
    seconds: float
    workers: int
    warnings: list[tuple[str, str]] = field(default_factory=list)
    choice: dict[str, Any] | None = None
    calibration: Calibration | None = None

    @property
    def skipped(self) -> pd.DataFrame:
        """The batches that were not mapped, with why."""
        return self.batches[self.batches["status"] != "mapped"]


def batch_needs(
    reference: ad.AnnData, n_cells: int, n_genes: int, n_train: int, n_layers: int = 2
) -> int:
    """Bytes a worker needs to map ``n_cells`` spatial cells and impute ``n_genes``: the reference
    (a copy of its values), the ensemble map, and one block of cells x genes at a time with its
    interval layers (:mod:`~napari_spatial_impute.core.section_output`: the section's values
    are written to the staging files, never held)."""
    from napari_spatial_impute.core.section_output import BAND_GENES, CHUNK_CELLS
    from napari_spatial_impute.io._sparse import is_sparse

    X = reference.X
    ref_bytes = (
        sum(np.asarray(getattr(X, part)).nbytes for part in ("data", "indices", "indptr"))
        if is_sparse(X)
        else np.asarray(X).nbytes
    )
    mapping = estimate_ensemble_map(reference.n_obs, n_cells, n_train).total_bytes
    block = 8 * min(n_cells, CHUNK_CELLS) * min(n_genes, BAND_GENES) * (4 + n_layers)
    return int(2 * ref_bytes + mapping + 2 * block)


@stops_on_signals  # Ctrl-C / SIGTERM: the run's cancel flag, raised once it has stopped
def map_batches(
    reference: ad.AnnData,
    spatial: ad.AnnData | str | os.PathLike[str],
    batch_key: str,
    out: str | os.PathLike[str],
    *,
    impute: Sequence[str] | None = None,
    projection: str = "auto",
    top_k: int = 10,
    workers: int | None = 0,
    scheduler: Any = None,
    memory_limit: str | int | None = None,
    retries: int = 2,
    progress: Callable[[BatchProgress], None] | None = None,
    cancel: CancelFlag = None,
    extra_uns: dict[str, Any] | None = None,
    **map_kwargs: Any,
) -> BatchRun:
    """Map each batch (section, slice, sample) of ``spatial`` against ``reference`` on its own and
    write one result file.

    Each batch's rows of the file are what :func:`~napari_spatial_impute.map_cells_to_space` on
    that batch alone (same settings, same seed, the chosen map as ``method``) followed by
    :func:`~napari_spatial_impute.result_to_anndata` gives. With ``method="auto"`` in cells mode
    (the default) the map is chosen once, before any batch, on a seeded sample of at most
    :data:`~napari_spatial_impute.core.maps.choose.CHOICE_CELLS` cells drawn across the batches
    (:func:`choose_once`), so that every batch makes the same map; the choice and its sample are
    in ``uns["spatial_impute"]["map_choice"]`` (and :attr:`BatchRun.choice`), and a weak
    imputation is warned of once. A given ``method`` is made in every batch without a choice.

    Parameters
    ----------
    reference
        Single-cell reference (in memory; every worker gets a copy once).
    spatial
        Spatial cells: an AnnData (in memory or backed) or the path of an ``.h5ad`` file, which
        is opened backed and read batch by batch.
    batch_key
        Spatial ``obs`` column naming each cell's batch (see
        :func:`~napari_spatial_impute.core.batches.plan_batches` for what is refused).
    out
        Output ``.h5ad`` (replaced atomically at the end) or new ``.zarr`` (AnnData store).
    impute
        Reference genes to impute (default: all). The training genes are ``genes`` of
        ``map_kwargs``, as in :func:`~napari_spatial_impute.map_cells_to_space`.
    projection, top_k
        As in :func:`~napari_spatial_impute.result_to_anndata`.
    workers
        ``0``: run the batches one after another in this process. ``N``: a Dask ``LocalCluster``
        of N single-threaded worker processes, at most one per batch and one per core
        (``os.cpu_count()``; a lower number than asked is warned of in one line,
        :class:`~napari_spatial_impute.InputWarning`); ``None``: one per core, at most one per
        batch. :attr:`BatchRun.workers` is the number of worker processes the run had.
    scheduler
        Address of a running Dask scheduler (``"tcp://host:8786"``, a scheme Dask can connect
        with here: :func:`~napari_spatial_impute.core.cluster.check_scheduler`) or a
        ``distributed.Client``; its workers must be able to import this package.
    memory_limit
        Memory per worker of the local cluster (``"4GB"``; default: Dask's share of the RAM).
        A limit below what the largest batch needs is refused before any work, and so is a limit
        with ``workers=0`` or a ``scheduler`` (it would size no worker).
    retries
        Times a batch whose task raised is run again (worker deaths are retried by Dask).
    progress
        Called with a :class:`BatchProgress` after each batch. The map chosen (``method="auto"``)
        is logged before any batch, in one line (logger ``napari_spatial_impute.core.batch_run``,
        level INFO; the command line prints it).
    cancel
        A ``threading.Event`` or callable; when set, the run stops (also while the map is
        chosen) before the next batch is written and nothing is written.
    extra_uns
        Added to ``uns["spatial_impute"]``.
    **map_kwargs
        Settings of :func:`~napari_spatial_impute.map_cells_to_space` (``cluster_key``, ...).

    Returns
    -------
    A :class:`BatchRun`.
    """
    from napari_spatial_impute.core.cluster import check_cluster_options, local_workers
    from napari_spatial_impute.core.genes import match_genes, resolve_gene_names
    from napari_spatial_impute.core.settings import resolve_map_method
    from napari_spatial_impute.io.batch_out import is_zarr_path, refuse_dangling_link
    from napari_spatial_impute.io.files import (
        atomic_output,
        check_output_folder,
        validate_adata,
        validate_spatial_coordinates,
    )

    t0 = time.perf_counter()
    if "callback" in map_kwargs or "init" in map_kwargs:
        raise InputError("map_batches maps each batch on its own: callback and init do not apply.")
    if projection not in PROJECTIONS:
        raise InputError(f"projection {projection!r} is not known; use one of {PROJECTIONS}.")
    settings = MappingSettings(**map_kwargs).validate()
    out = Path(out)
    zarr_out = is_zarr_path(out)
    if not zarr_out and out.suffix.lower() != ".h5ad":
        raise InputError(f"output {str(out)!r} must end in .h5ad or .zarr.")
    check_output_folder(out, "choose another output")
    refuse_dangling_link(out, "choose another output")
    if zarr_out and os.path.lexists(out):
        raise InputError(f"output {str(out)!r} exists; choose another name or remove it.")
    check_cluster_options(workers, scheduler, memory_limit)
    validate_adata(reference, "reference")
    source = SpatialSource(spatial)
    if source.path is not None and out.exists() and os.path.samefile(out, source.path):
        raise InputError(f"output {str(out)!r} is the spatial input; choose another output.")
    light = source.light()
    validate_spatial_coordinates(light)
    cluster_key = map_kwargs.get("cluster_key")
    if cluster_key is not None and cluster_key not in reference.obs.columns:
        raise InputError(
            f"cluster key {cluster_key!r} is not in the reference obs; columns there are: "
            f"{', '.join(map(str, reference.obs.columns)) or '(none)'}."
        )
    shared = match_genes(reference.var_names, light.var_names)
    if not shared:
        raise InputError(
            "no shared genes between reference and spatial data; check that both name genes the "
            "same way (symbols or Ensembl ids)."
        )
    names = (
        list(map(str, reference.var_names))
        if impute is None
        else resolve_gene_names(reference.var_names, list(impute))
    )
    batches = plan_batches(source.obs, batch_key)
    n_train = len(shared)
    largest = max(batches, key=lambda b: b.n_cells)
    need = batch_needs(reference, largest.n_cells, len(names), n_train)
    in_process = workers == 0 and scheduler is None
    if not in_process and scheduler is None:
        workers, lowered = local_workers(workers, len(batches))
        if lowered:
            warnings.warn(lowered, InputWarning, stacklevel=2)

    options: dict[str, Any] = {
        "map_kwargs": dict(map_kwargs),
        "genes": names,
        "projection": projection,
        "top_k": top_k,
    }
    chosen: BatchChoice | None = None
    timings: dict[str, float] = {}

    def prepare() -> None:
        """Before any batch is submitted, on a sample of cells drawn across the batches: with
        method auto, the map every batch makes; with intervals, their calibration."""
        nonlocal chosen
        method = resolve_map_method(settings.method, settings.mode)
        calibrates = bool(settings.uncertainty) and settings.mode == "cells"
        if method != "auto" and not calibrates:
            return
        if is_cancelled(cancel):
            raise MappingCancelled("cancelled before the map was chosen")
        what = "choose the map" if method == "auto" else "calibrate the prediction intervals"
        sample = draw_sample(reference, source, batches, settings, what)
        if method == "auto":
            chosen = choose_once(sample, batches, cancel=cancel)
            method = chosen.chosen
            options["map_kwargs"]["method"] = method
            log.info("%s", chosen.describe())
            if chosen.choice.weak():
                warnings.warn(chosen.choice.weak(), InputWarning, stacklevel=3)
        if calibrates:
            t_cal = time.perf_counter()
            choice = chosen.choice if chosen is not None else None
            options["calibration"] = calibrate_once(sample, method, choice, cancel=cancel)
            timings["calibration_s"] = time.perf_counter() - t_cal

    records: list[dict[str, Any]] = []
    notes: list[tuple[str, str]] = []
    collector = Collector(source, names)
    n_workers = 1
    if in_process:
        import torch

        from napari_spatial_impute.core.engine.resources import available_bytes

        _check_memory(need, int(available_bytes(torch.device("cpu")) * 0.9), largest, "")
    with atomic_output(out, folder=zarr_out) as tmp:
        writer = None
        stage = None
        try:
            from napari_spatial_impute.io.batch_out import BatchResultWriter
            from napari_spatial_impute.io.batch_stage import make_stage_folder

            run_id = uuid.uuid4().hex
            stage = make_stage_folder(out, run_id)
            options.update(stage=str(stage), run_id=run_id)
            writer = BatchResultWriter(
                tmp,
                source.obs.copy(),
                {k: v for k, v in light.obsm.items()},
                names,
                batches=[b.rows for b in batches],
                stage=stage,
                zarr=zarr_out,
                stop=lambda: is_cancelled(cancel),
            )

            def accept(output: BatchOutput) -> None:
                assert writer is not None
                writer.write(output)
                collector.add(output)
                notes.extend((output.name, text) for text in output.warnings)
                records.append(_record(output))
                if progress is not None:
                    progress(
                        BatchProgress(
                            len(records),
                            len(batches),
                            output.name,
                            int(output.rows.size),
                            output.status,
                            output.reason,
                            output.seconds,
                            output.worker,
                        )
                    )

            if in_process:
                prepare()
                for batch in batches:
                    if is_cancelled(cancel):
                        raise MappingCancelled(f"cancelled after {len(records)} batches")
                    # the cancel reaches the batch's own epochs (one can map for many minutes)
                    here = {**options, "map_kwargs": {**options["map_kwargs"], "cancel": cancel}}
                    accept(map_batch(reference, source.take(batch.rows), batch, **here))
            else:
                n_workers = _run_dask(
                    reference,
                    source,
                    batches,
                    options,
                    accept,
                    workers=workers,
                    scheduler=scheduler,
                    memory_limit=memory_limit,
                    retries=retries,
                    cancel=cancel,
                    need=need,
                    largest=largest,
                    before=prepare,
                )
            table = pd.DataFrame(records).sort_values("index").set_index("name")
            if (table["status"] != "mapped").all():
                first = table["reason"].iloc[0]
                raise InputError(f"no batch could be mapped (first: {first}); nothing was written.")
            uns = collector.uns(
                table,
                batch_key,
                time.perf_counter() - t0,
                n_workers,
                extra_uns,
                chosen,
                {**timings, "assembly_s": writer.seconds},
                "calibration" in options,
            )
            writer.finish(collector.obs(), collector.var(), uns)
        finally:
            if writer is not None:
                writer.close()
            from napari_spatial_impute.io.batch_stage import remove_stage_folder

            remove_stage_folder(stage)
    table = pd.DataFrame(records).sort_values("index").set_index("name")
    return BatchRun(
        out,
        table.drop(columns="index"),
        time.perf_counter() - t0,
        n_workers,
        notes,
        chosen.record() if chosen is not None else None,
        options.get("calibration"),
    )


def _check_memory(need: int, limit: int, largest: Batch, what: str) -> None:
    if limit and need > limit:
        raise InputError(
            f"the largest batch ({largest.name!r}, {largest.n_cells:,} cells) needs about "
            f"{need / GIB:.1f} GiB per worker, but {what or 'this machine has'} "
            f"{limit / GIB:.1f} GiB: raise --memory-limit, use fewer workers, impute fewer genes "
            "(--impute) or split that batch."
        )


def _record(output: BatchOutput) -> dict[str, Any]:
    score = output.info.get("training_score", np.nan) if output.status == "mapped" else np.nan
    return {
        "index": output.index,
        "name": output.name,
        "n_cells": int(output.rows.size),
        "status": output.status,
        "reason": output.reason,
        "training_score": float(score),
        "seconds": float(output.seconds),
        "worker": output.worker,
        "peak_rss_gib": float(output.peak_rss_gib),
    }


def run_batch_on_worker(
    reference: ad.AnnData, spatial: ad.AnnData, batch: Batch, options: dict[str, Any]
) -> BatchOutput:
    """A Dask task: map one batch with the worker's threads."""
    threads = None
    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        pass
    return map_batch(reference, spatial, batch, threads=threads, **options)


def _run_dask(
    reference: ad.AnnData,
    source: SpatialSource,
    batches: list[Batch],
    options: dict[str, Any],
    accept: Callable[[BatchOutput], None],
    *,
    workers: int | None,
    scheduler: Any,
    memory_limit: str | int | None,
    retries: int,
    cancel: CancelFlag,
    need: int,
    largest: Batch,
    before: Callable[[], None] = lambda: None,
) -> int:
    """Run the batches on a Dask cluster; returns the number of its worker processes (those of
    a running ``scheduler``'s cluster: at most one per batch).

    ``workers`` is the size of the local cluster
    (:func:`~napari_spatial_impute.core.cluster.local_workers`).
    ``before`` runs once the cluster answers and its memory is checked, before any batch is
    submitted (the choice of the map).
    """
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    from napari_spatial_impute.core.cluster import (
        count_workers,
        dask_client,
        parse_memory,
        worker_memory_limits,
    )

    limit = parse_memory(memory_limit)
    if scheduler is None and limit is not None:
        _check_memory(need, limit, largest, "--memory-limit gives each worker")
    done: set[int] = set()
    run_id = uuid.uuid4().hex[:8]
    with dask_client(workers if scheduler is None else None, limit, scheduler) as client:
        limits = [x for x in worker_memory_limits(client) if x > 0]
        if limits:
            _check_memory(need, min(limits), largest, "a worker of the cluster has")
        n_workers = max(1, min(count_workers(client), len(batches)))
        # the workers import what a batch needs while this process chooses and calibrates the map
        # (torch alone takes seconds; else each worker's first batch pays it)
        client.run(warm_up, wait=False, on_error="ignore")
        before()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "large object in the task graph": the batch's cells
            ref = client.scatter(reference, broadcast=True, hash=False)
            pending = deque(batches)
            running: dict[str, Batch] = {}
            queue = as_completed()

            def submit() -> None:
                batch = pending.popleft()
                future = client.submit(
                    run_batch_on_worker,
                    ref,
                    source.take(batch.rows),
                    batch,
                    options,
                    key=f"nsi-{run_id}-batch-{batch.index}",
                    retries=retries,
                    pure=False,
                )
                running[future.key] = batch
                queue.add(future)

            if is_cancelled(cancel):  # stopped while the reference was sent
                raise MappingCancelled("cancelled before any batch")
            for _ in range(min(len(pending), n_workers + 1)):
                submit()
            try:
                # polled, not blocked on: the cancel flag (a signal's too) is read every POLL_S
                while not queue.is_empty():
                    if is_cancelled(cancel):
                        raise MappingCancelled(f"cancelled after {len(done)} batches")
                    if not queue.has_ready():
                        time.sleep(POLL_S)
                        continue
                    future = next(queue)
                    batch = running.pop(future.key)
                    try:
                        output = future.result()
                    except KilledWorker:
                        raise InputError(
                            f"batch {batch.name!r} ({batch.n_cells:,} cells) killed its worker "
                            f"again and again (it needs about {need / GIB:.1f} GiB); raise "
                            "--memory-limit, use fewer workers or split that batch."
                        ) from None
                    future.release()
                    if batch.index not in done:  # a batch is written once, whatever Dask did
                        done.add(batch.index)
                        accept(output)
                    del output
                    if pending:
                        submit()
            except BaseException:
                for future in list(queue.futures):
                    future.cancel()
                raise
    missing = [b.name for b in batches if b.index not in done]
    if missing:
        raise RuntimeError(f"batches not done: {missing}")
    return n_workers
