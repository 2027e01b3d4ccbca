"""Mapping section by section: the batches of a batch key and the work of one batch.

A *batch key* is a spatial ``obs`` column naming the section, slice or sample of each cell. Each
batch maps against the whole reference on its own (:func:`map_batch`), exactly as mapping that
batch alone would (:func:`~napari_spatial_impute.map_cells_to_space` on those cells with the same
settings, seed and map): sections of an atlas are imaged separately, and their cells never share a
neighbourhood. Which map (``method="auto"``) is chosen once for the whole run, on a seeded sample
of cells drawn across the batches (:func:`sample_rows`), so that every section uses the same map.
:func:`plan_batches` checks the key before any work. Running the batches (in this process or on a
Dask cluster) and writing their results is :mod:`napari_spatial_impute.core.batch_run`.

:class:`SpatialSource` reads the spatial cells batch by batch (an ``.h5ad`` opened backed). Nothing
here imports Dask: a batch is plain data in, plain data out, so it runs the same in a worker
process on another machine.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputError, InputWarning, first_line
from napari_spatial_impute.io._sparse import is_sparse
from napari_spatial_impute.io.batch_stage import Staged
from napari_spatial_impute.io.schema import UNS_KEY

if TYPE_CHECKING:
    from napari_spatial_impute.core.uncertainty import Calibration

#: A batch maps against the reference on its own: fewer cells than this are refused.
MIN_BATCH_CELLS = 20
#: More batches than this are refused (a key that names cells or FOVs, not sections).
MAX_BATCHES = 5000


@dataclass(frozen=True)
class Batch:
    """One batch: its position in the plan, its name and its rows (sorted positions)."""

    index: int
    name: str
    rows: np.ndarray

    @property
    def n_cells(self) -> int:
        """Cells in the batch."""
        return int(self.rows.size)


def plan_batches(
    obs: pd.DataFrame,
    batch_key: str,
    *,
    min_cells: int = MIN_BATCH_CELLS,
    max_batches: int = MAX_BATCHES,
) -> list[Batch]:
    """The batches of ``batch_key``, in natural order of their names.

    Refused with one line (never merged: merging sections would mix tissues that were never
    neighbours): a missing column, cells without a value, more than ``max_batches`` values, and
    batches with fewer than ``min_cells`` cells (listed, with the fix).
    """
    from napari_spatial_impute.io.files import _list_columns, _text_labels

    if batch_key not in obs.columns:
        raise InputError(
            f"batch key {batch_key!r} is not a column of the spatial obs; columns there are: "
            f"{_list_columns(obs)}."
        )
    column = obs[batch_key]
    missing = int(column.isna().sum())
    if missing:
        raise InputError(
            f"batch key {batch_key!r} has {missing:,} cells without a value; give them their "
            "section's value or drop them."
        )
    labels = _text_labels(column)
    counts = np.bincount(labels.codes, minlength=len(labels.categories))
    n_cells = int(counts.sum())
    if len(counts) > max_batches or (len(counts) > 1 and np.median(counts) < min_cells):
        raise InputError(
            f"batch key {batch_key!r} has {len(counts):,} values for {n_cells:,} cells (median "
            f"{int(np.median(counts)):,} cells per batch): it names cells or fields of view, not "
            "sections; give a section, slice or sample column (refused, not merged)."
        )
    small = np.flatnonzero(counts < min_cells)
    if small.size:
        names = ", ".join(f"{labels.categories[i]!s} ({counts[i]})" for i in small[:5])
        more = f" and {small.size - 5} more" if small.size > 5 else ""
        raise InputError(
            f"batch key {batch_key!r}: {small.size} batch{'es' if small.size > 1 else ''} "
            f"{'have' if small.size > 1 else 'has'} fewer than {min_cells} cells ({names}{more}); "
            "each batch maps on its own: drop those cells or give them their section's value "
            "(refused, not merged)."
        )
    order = np.argsort(labels.codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [
        Batch(i, str(name), np.sort(order[bounds[i] : bounds[i + 1]]).astype(np.int64))
        for i, name in enumerate(labels.categories)
    ]


class SpatialSource:
    """The spatial cells, read batch by batch: an AnnData in memory, or an ``.h5ad`` opened backed."""

    def __init__(self, spatial: ad.AnnData | str | os.PathLike[str]) -> None:
        if isinstance(spatial, ad.AnnData):
            self.adata = spatial
            self.path: Path | None = Path(spatial.filename) if spatial.isbacked else None
        else:
            from napari_spatial_impute.io.files import read_h5ad

            self.path = Path(spatial)
            self.adata = read_h5ad(self.path, "spatial", backed=True)

    @property
    def obs(self) -> pd.DataFrame:
        """The cells' ``obs`` (in memory also when the file is backed)."""
        obs: pd.DataFrame = self.adata.obs
        return obs

    def take(self, rows: np.ndarray) -> ad.AnnData:
        """The cells at ``rows`` (sorted), in memory."""
        sub = self.adata[rows]
        return sub.to_memory() if self.adata.isbacked else sub.copy()

    def light(self) -> ad.AnnData:
        """``obs``, ``var`` and ``obsm`` without ``X`` (for checks that read no values)."""
        return ad.AnnData(
            obs=self.adata.obs,
            var=pd.DataFrame(index=self.adata.var_names.copy()),
            obsm={k: np.asarray(v) for k, v in self.adata.obsm.items() if _small_obsm(v)},
        )


def _small_obsm(value: Any) -> bool:
    return not isinstance(value, pd.DataFrame) and np.ndim(value) == 2 and np.shape(value)[1] <= 3


def sample_rows(batches: Sequence[Batch], limit: int, seed: int) -> np.ndarray:
    """A seeded sample of at most ``limit`` cells drawn across ``batches`` (sorted rows).

    Each batch gives a share proportional to its cells (largest remainders round the shares to
    ``limit`` in all); every cell when the batches hold ``limit`` cells or fewer.
    """
    sizes = np.asarray([b.n_cells for b in batches], dtype=np.int64)
    total = int(sizes.sum())
    if total <= limit:
        return np.sort(np.concatenate([b.rows for b in batches]))
    quota = sizes * (limit / total)
    take = np.floor(quota).astype(np.int64)
    extra = np.argsort(-(quota - take), kind="stable")[: limit - int(take.sum())]
    take[extra] += 1
    rng = np.random.default_rng(seed)
    parts = [
        rng.choice(b.rows, int(k), replace=False)
        for b, k in zip(batches, take, strict=True)
        if k > 0
    ]
    return np.sort(np.concatenate(parts)).astype(np.int64)


@dataclass
class BatchOutput:
    """What one batch gives back: everything the result file holds for its cells.

    ``status`` is ``"mapped"`` or ``"skipped"`` (with ``reason``; the arrays are then empty).
    Per-cell arrays have one row per cell of the batch, in the batch's row order: ``staged``
    (:class:`~napari_spatial_impute.io.batch_stage.Staged`: the imputed genes, intervals and
    ``obsm`` arrays, written beside the output or carried in memory), or ``X``, ``layers`` and
    ``obsm`` as arrays.
    """

    index: int
    name: str
    rows: np.ndarray
    status: str = "mapped"
    reason: str = ""
    X: np.ndarray | None = None
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    obs: pd.DataFrame | None = None
    obsm: dict[str, Any] = field(default_factory=dict)
    var: pd.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    worker: str = ""
    peak_rss_gib: float = float("nan")
    warnings: list[str] = field(default_factory=list)
    staged: list[Staged] = field(default_factory=list)


def _no_counts(spatial: ad.AnnData) -> bool:
    X = spatial.X
    total = X.sum() if is_sparse(X) else np.asarray(X, dtype=np.float64).sum()
    return bool(float(total) <= 0)


def map_batch(
    reference: ad.AnnData,
    spatial: ad.AnnData,
    batch: Batch,
    *,
    map_kwargs: dict[str, Any],
    genes: Sequence[str] | None = None,
    projection: str = "auto",
    top_k: int = 10,
    threads: int | None = None,
    calibration: Calibration | None = None,
    stage: str | None = None,
    run_id: str = "",
) -> BatchOutput:
    """Map one batch (``spatial`` holds its cells only) and impute ``genes`` there.

    The same as :func:`~napari_spatial_impute.map_cells_to_space` on these cells (with
    ``map_kwargs``: a batched run gives the map it chose once as ``method``) followed by
    :func:`~napari_spatial_impute.result_to_anndata`, except for the prediction intervals when
    a ``calibration`` made once for the whole run is given: the batch's map is then not
    calibrated again, and its cells take that calibration's quantiles
    (:func:`~napari_spatial_impute.core.uncertainty.for_cells`). The imputed genes and intervals
    are computed a chunk of cells at a time
    (:func:`~napari_spatial_impute.core.section_output.impute_in_chunks`) into the run's staging
    folder ``stage`` when this process sees it (``run_id`` names the run), else into arrays
    returned in memory (:attr:`BatchOutput.staged` either way). A batch that cannot be mapped
    (no counts, or input the mapping refuses) is returned as ``"skipped"`` with the one-line
    reason, never silently.

    ``threads`` sets torch's threads for the call (a Dask worker with one thread per process).
    """
    import torch

    from napari_spatial_impute.core.export import result_to_anndata
    from napari_spatial_impute.core.mapping import map_cells_to_space
    from napari_spatial_impute.core.project import resolve_method, resolve_reference_genes
    from napari_spatial_impute.core.section_output import (
        BAND_GENES,
        impute_in_chunks,
        output_arrays,
    )
    from napari_spatial_impute.core.uncertainty import for_cells
    from napari_spatial_impute.io.batch_stage import BatchStage, usable_folder

    t0 = time.perf_counter()
    out = BatchOutput(batch.index, batch.name, batch.rows, worker=_where())
    if spatial.n_obs != batch.n_cells:
        raise ValueError(
            f"batch {batch.name!r}: {spatial.n_obs} cells given, {batch.n_cells} planned"
        )
    if _no_counts(spatial):
        out.status, out.reason = "skipped", "no counts (every value is 0)"
        return out
    kwargs = dict(map_kwargs)
    calibrated_once = calibration is not None and kwargs.get("mode", "cells") == "cells"
    if calibrated_once:
        kwargs["uncertainty"] = False
    cancel = kwargs.get("cancel")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InputWarning)
            result = map_cells_to_space(reference, spatial, **kwargs)
            if calibrated_once and calibration is not None:
                result.calibration = for_cells(calibration, result)
            method = resolve_method(result, projection)
            names = resolve_reference_genes(result, genes)
            t_map = time.perf_counter()
            stage_ = BatchStage(usable_folder(stage, run_id), batch.index)
            for name in output_arrays(result, method):
                stage_.create(name, (batch.n_cells, len(names)), np.float32, BAND_GENES)
            summaries = impute_in_chunks(
                result, names, method, stage_.write, check=_checker(cancel), band_genes=BAND_GENES
            )
            adata = result_to_anndata(
                result, genes=names, method=method, top_k=top_k, impute=False, summaries=summaries
            )
    except InputError as exc:
        out.status, out.reason = "skipped", first_line(exc)
        out.seconds = time.perf_counter() - t0
        return out
    finally:
        torch.set_num_threads(old_threads)
    out.warnings = sorted({str(w.message) for w in caught if issubclass(w.category, InputWarning)})
    for key, value in adata.obsm.items():
        if key in spatial.obsm:
            continue
        if isinstance(value, pd.DataFrame):
            stage_.put(f"frame:{key}", value.to_numpy(), list(map(str, value.columns)))
        else:
            stage_.put(f"obsm/{key}", np.asarray(value))
    out.staged = stage_.staged()
    new_cols = [c for c in adata.obs.columns if c not in spatial.obs.columns]
    out.obs = adata.obs[new_cols].copy()
    out.var = adata.var.copy()
    out.info = dict(adata.uns[UNS_KEY])
    out.info["timings"] = {
        **out.info.get("timings", {}),
        "impute_and_stage_s": time.perf_counter() - t_map,
    }
    out.seconds = time.perf_counter() - t0
    out.peak_rss_gib = peak_rss_gib()
    return out


def _checker(cancel: Any) -> Any:
    """A check that raises :class:`~napari_spatial_impute.MappingCancelled` once ``cancel`` is set."""
    if cancel is None:
        return None
    from napari_spatial_impute._errors import MappingCancelled
    from napari_spatial_impute.core.engine.mapper import is_cancelled

    def check() -> None:
        if is_cancelled(cancel):
            raise MappingCancelled("cancelled while imputing")

    return check


def warm_up() -> None:
    """Import what :func:`map_batch` needs (a worker process runs it before its first batch)."""
    import torch  # noqa: F401

    from napari_spatial_impute.core import export, mapping, section_output  # noqa: F401
    from napari_spatial_impute.io import batch_stage  # noqa: F401


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (the worker's, on a cluster)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux
    except (ImportError, OSError):
        return float("nan")


def _where() -> str:
    """Host and process of the worker that ran a batch (for the run record)."""
    return f"{socket.gethostname()}:{os.getpid()}"
