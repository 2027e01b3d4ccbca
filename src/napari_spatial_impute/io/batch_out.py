"""One result file written batch by batch (``.h5ad`` through h5py, or an AnnData ``.zarr``).

The result of a batched run has the layout of any result (see
:mod:`napari_spatial_impute.core.export`), written so that no process holds more than a block
of it: the file starts as an AnnData with the spatial ``obs`` and the imputed genes' names; the
first batch that maps creates ``X``, the interval layers and the per-cell ``obsm`` arrays
(DataFrames as one array per column, not compressed); the batches' staged rows
(:mod:`~napari_spatial_impute.io.batch_stage`) are then written whole chunk by whole chunk in
the file's row order (:class:`BatchResultWriter`); :meth:`BatchResultWriter.finish` writes
``obs``, ``var`` and ``uns``, which are small. Rows of skipped batches stay NaN (``-1`` for
indices).
The file is ordinary: ``anndata.read_h5ad`` / ``read_zarr`` read it. zarr's notes on its future
defaults (autosharding, consolidated metadata), one per array written, are silenced here, where
the store is written, and nowhere else.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputError, MappingCancelled
from napari_spatial_impute.io.batch_stage import Staged

#: Rows per chunk of the written arrays.
CHUNK_ROWS = 8192
#: Columns per chunk of the gene arrays (``X``, layers).
CHUNK_GENES = 256


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a ``.zarr`` output."""
    return str(path).lower().rstrip("/").endswith(".zarr")


def refuse_dangling_link(path: str | os.PathLike[str], fix: str) -> None:
    """Refuse an output that is a symbolic link to nothing (dangling, or a loop), before any work:
    ``Path.exists`` is False for it, and the result renamed onto it at the end would fail (a
    ``.zarr``) or replace the link (an ``.h5ad``)."""
    if os.path.islink(path) and not os.path.exists(path):
        raise InputError(
            f"output {str(path)!r} is a symbolic link to nothing (dangling, or a loop); remove "
            f"it or {fix}."
        )


class BatchResultWriter:
    """Write a result AnnData into ``path`` (a new temporary file or folder) from its batches.

    Each batch's per-cell arrays come staged (:mod:`~napari_spatial_impute.io.batch_stage`: files
    in ``stage``, or arrays in memory, which are staged there on arrival). The output's arrays
    are written a chunk of rows at a time, whole chunks (:data:`CHUNK_ROWS` x
    :data:`CHUNK_GENES`) in the output's own row order, as soon as every batch with cells in
    those rows has arrived: one write per chunk however the batches' cells are interleaved in
    the file (cells sorted by id or FOV, not by section), and a file sorted by section is
    written as its sections finish. A batch's staging files are removed once its rows are
    written.

    Parameters
    ----------
    path
        The (temporary) file or folder to write; ``zarr`` says which format.
    obs
        The spatial ``obs`` (all cells, the file's row order).
    obsm
        The spatial ``obsm`` entries kept as given (``spatial`` and the like; small).
    genes
        Names of the imputed genes (the file's columns).
    batches
        Each batch's rows (sorted positions), by batch index; together every row once.
    stage
        The run's staging folder (:func:`~napari_spatial_impute.io.batch_stage.make_stage_folder`).
    zarr
        Write an AnnData zarr store (version 3, arrays not compressed) instead of ``.h5ad``.
    stop
        Asked before each array a batch stages and each chunk written, and before the end's
        ``obs``, ``var`` and ``uns``: ``True`` stops the writing with
        :class:`~napari_spatial_impute.MappingCancelled` (the caller removes the file).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        obs: pd.DataFrame,
        obsm: dict[str, Any],
        genes: list[str],
        *,
        batches: list[np.ndarray],
        stage: Path,
        zarr: bool,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.path = Path(path)
        self.zarr = zarr
        self.stage = Path(stage)
        self._stop = stop
        self.n_obs = len(obs)
        self.genes = list(genes)
        self.written: list[int] = []
        self._owner = np.full(self.n_obs, -1, dtype=np.int32)
        self._pos = np.zeros(self.n_obs, dtype=np.int64)
        n_chunks = -(-self.n_obs // CHUNK_ROWS)
        self._waiting = np.zeros(n_chunks, dtype=np.int64)  # batches a chunk still waits for
        self._chunks: list[np.ndarray] = []  # the chunks each batch has rows in
        for b, rows in enumerate(batches):
            rows = np.asarray(rows, dtype=np.int64)
            self._owner[rows] = b
            self._pos[rows] = np.arange(rows.size)
            chunks = np.unique(rows // CHUNK_ROWS)
            self._chunks.append(chunks)
            self._waiting[chunks] += 1
        if (self._owner < 0).any():
            raise ValueError("the batches do not cover every row of the output")
        self._left = np.asarray([c.size for c in self._chunks], dtype=np.int64)
        self._staged: dict[int, dict[str, Staged]] = {}
        self._ready: list[int] = []
        self.chunks_written = 0
        #: Seconds spent writing the output's arrays (staging what came in memory included).
        self.seconds = 0.0
        skeleton = ad.AnnData(obs=obs, var=pd.DataFrame(index=pd.Index(self.genes)), obsm=obsm)
        if zarr:
            import zarr as zarr_mod

            with ad.settings.override(zarr_write_format=3), _quiet():
                skeleton.write_zarr(self.path)
            self._root: Any = zarr_mod.open_group(self.path, mode="r+", use_consolidated=False)
        else:
            import h5py

            skeleton.write_h5ad(self.path)
            self._root = h5py.File(self.path, "r+")
        self._arrays: dict[str, Any] = {}
        self._specs: dict[str, Staged] = {}

    # ------------------------------------------------------------------ arrays
    def _new_array(
        self, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any, fill: Any
    ) -> Any:
        if self.zarr:
            with _quiet():
                arr = self._root.create_array(
                    name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill, compressors=None
                )
        else:
            arr = self._root.create_dataset(
                name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=fill
            )
        arr.attrs["encoding-type"] = "array"
        arr.attrs["encoding-version"] = "0.2.0"
        return arr

    def _create(self, name: str, width: int, dtype: Any, fill: Any) -> Any:
        shape = (self.n_obs, max(width, 0))
        chunks = (max(1, min(self.n_obs, CHUNK_ROWS)), max(1, min(width, CHUNK_GENES)))
        return self._new_array(name, shape, chunks, dtype, fill)

    def _frame(self, key: str, columns: list[str], dtype: Any) -> list[Any]:
        """An obsm DataFrame as anndata stores it, one array per column."""
        from anndata.io import write_elem

        index = pd.Index(self._obs_names(), name=None)
        with _quiet():
            write_elem(self._root, f"obsm/{key}", pd.DataFrame(index=index))
        group = self._root[f"obsm/{key}"]
        group.attrs["column-order"] = list(columns)
        chunks = (max(1, min(self.n_obs, CHUNK_ROWS)),)
        fill = _fill(dtype)
        return [
            self._new_array(f"obsm/{key}/{c}", (self.n_obs,), chunks, dtype, fill) for c in columns
        ]

    def _obs_names(self) -> np.ndarray:
        from anndata.io import read_elem

        return np.asarray(read_elem(self._root["obs"]).index.astype(str))

    def _prepare(self, staged: list[Staged]) -> None:
        """Create the output's arrays from the first mapped batch's (names, widths, dtypes)."""
        for spec in staged:
            dtype = np.dtype(spec.dtype)
            if spec.name.startswith("frame:"):
                key = spec.name.removeprefix("frame:")
                self._arrays[spec.name] = self._frame(key, list(spec.columns or ()), dtype)
            else:
                self._arrays[spec.name] = self._create(
                    spec.name, spec.shape[1], dtype, _fill(dtype)
                )
            self._specs[spec.name] = spec

    # ------------------------------------------------------------------ writing
    def _check_stop(self) -> None:
        if self._stop is not None and self._stop():
            raise MappingCancelled(f"writing {self.path.name} was cancelled")

    def write(self, output: Any) -> None:
        """Take one batch (a :class:`~napari_spatial_impute.core.batches.BatchOutput`): stage what
        came in memory, then write every chunk of rows whose batches have all arrived."""
        if output.index in self.written:
            raise RuntimeError(f"batch {output.name!r} was written already")
        t0 = time.perf_counter()
        try:
            self._take(output)
        finally:
            self.seconds += time.perf_counter() - t0

    def _take(self, output: Any) -> None:
        from napari_spatial_impute.io.batch_stage import stage_in_memory

        self._check_stop()
        if output.status == "mapped":
            staged = []
            for i, spec in enumerate(_staged_of(output)):
                self._check_stop()
                staged.append(stage_in_memory(spec, self.stage, output.index, i))
            if not self._arrays:
                self._prepare(staged)
            missing = set(self._arrays) ^ {s.name for s in staged}
            if missing:
                raise RuntimeError(
                    f"batch {output.name!r} and the first batch differ in {sorted(missing)}"
                )
            self._staged[output.index] = {s.name: s for s in staged}
            if self._left[output.index] == 0:  # no rows (only in tests: batches have cells)
                self._remove(output.index)
        self.written.append(output.index)
        for c in self._chunks[output.index]:
            self._waiting[c] -= 1
            if self._waiting[c] == 0:
                self._ready.append(int(c))
        if self._arrays:
            while self._ready:
                self._assemble(self._ready.pop(0))

    def _assemble(self, c: int) -> None:
        """Write chunk of rows ``c`` of every array from the batches' staged rows."""
        c0, c1 = c * CHUNK_ROWS, min((c + 1) * CHUNK_ROWS, self.n_obs)
        owner, pos = self._owner[c0:c1], self._pos[c0:c1]
        present = [int(b) for b in np.unique(owner)]
        for name, target in self._arrays.items():
            spec = self._specs[name]
            dtype = np.dtype(spec.dtype)
            width = spec.shape[1]
            band = _band(c1 - c0, width, dtype.itemsize)
            for g0 in range(0, max(width, 1), band):
                self._check_stop()
                g1 = min(g0 + band, width)
                block = np.full((c1 - c0, g1 - g0), _fill(dtype), dtype=dtype)
                for b in present:
                    staged = self._staged.get(b, {}).get(name)
                    if staged is None:  # a skipped batch: its rows stay NaN / -1
                        continue
                    mask = owner == b
                    mine = pos[mask]  # sorted positions in the batch
                    lo, hi = int(mine[0]), int(mine[-1]) + 1
                    block[mask] = staged.rows(lo, hi, g0, g1)[mine - lo]
                if isinstance(target, list):
                    for j, column in enumerate(target[g0:g1]):
                        column[c0:c1] = block[:, j]
                else:
                    target[c0:c1, g0:g1] = block
        self.chunks_written += 1
        for b in present:
            self._left[b] -= 1
            if self._left[b] == 0:
                self._remove(b)

    def _remove(self, b: int) -> None:
        """Remove batch ``b``'s staging files (its rows are written)."""
        for staged in self._staged.pop(b, {}).values():
            if staged.path is not None:
                Path(staged.path).unlink(missing_ok=True)

    def finish(self, obs: pd.DataFrame, var: pd.DataFrame, uns: dict[str, Any]) -> None:
        """Write ``obs``, ``var`` and ``uns`` and close the file."""
        from anndata.io import write_elem

        if not self._arrays:  # nothing mapped: the caller refuses before this
            raise RuntimeError("no batch was mapped")
        if self.chunks_written != self._waiting.size:
            raise RuntimeError("some batches were not written")
        self._check_stop()
        with _quiet():
            write_elem(self._root, "obs", obs)
            write_elem(self._root, "var", var)
            write_elem(self._root, "uns", uns)
        self.close()
        if self.zarr:
            import zarr as zarr_mod

            with _quiet():
                zarr_mod.consolidate_metadata(str(self.path))

    def close(self) -> None:
        """Close the file (also after a failure)."""
        if not self.zarr and self._root is not None:
            self._root.close()
        self._root = None


#: Bytes of one block read from the staging files and written (a band of genes of a chunk).
BLOCK_BYTES = 128 << 20


def _band(rows: int, width: int, itemsize: int) -> int:
    """Columns per block: whole chunks of genes, a block near :data:`BLOCK_BYTES` at most."""
    per = max(1, BLOCK_BYTES // max(1, rows * itemsize * CHUNK_GENES)) * CHUNK_GENES
    return max(1, min(width, per))


def _fill(dtype: Any) -> Any:
    return np.nan if np.dtype(dtype).kind == "f" else -1


def _staged_of(output: Any) -> list[Staged]:
    """A batch's arrays as :class:`Staged` (those it returned in memory too)."""
    if output.staged:
        return list(output.staged)
    out = [Staged("X", output.X.shape, output.X.dtype.str, data=np.asarray(output.X))]
    for k, v in output.layers.items():
        out.append(Staged(f"layers/{k}", v.shape, v.dtype.str, data=np.asarray(v)))
    for key, value in output.obsm.items():
        if isinstance(value, pd.DataFrame):
            arr = value.to_numpy()
            out.append(
                Staged(
                    f"frame:{key}",
                    arr.shape,
                    arr.dtype.str,
                    data=arr,
                    columns=tuple(map(str, value.columns)),
                )
            )
        else:
            arr = np.asarray(value)
            out.append(Staged(f"obsm/{key}", arr.shape, arr.dtype.str, data=arr))
    return out


#: zarr's notes on its future defaults, one per array (anndata's) or store (zarr's) written:
#: not for users (``UserWarning`` and zarr's ``ZarrUserWarning``, a subclass).
ZARR_NOTES = (
    "zarr v3 autosharding will be the default",
    "Consolidated metadata is currently not part",
)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence :data:`ZARR_NOTES`, and only those, while the store is written."""
    with warnings.catch_warnings():
        for note in ZARR_NOTES:
            warnings.filterwarnings("ignore", message=note, category=UserWarning)
        yield
