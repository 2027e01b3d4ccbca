"""One result file written batch by batch (``.h5ad`` through h5py, or an AnnData ``.zarr``).

The result of a batched run has the layout of any result (see
:mod:`napari_spatial_impute.core.export`), written so that no process holds more than one batch
of it: the file starts as an AnnData with the spatial ``obs`` and the imputed genes' names; the
first batch that maps creates ``X``, the interval layers and the per-cell ``obsm`` arrays
(DataFrames as one array per column); each batch then writes its rows (runs of consecutive rows,
one run when the file is ordered by batch); :meth:`BatchResultWriter.finish` writes ``obs``,
``var`` and ``uns``, which are small. Rows of skipped batches stay NaN (``-1`` for indices).
The file is ordinary: ``anndata.read_h5ad`` / ``read_zarr`` read it. zarr's notes on its future
defaults (autosharding, consolidated metadata), one per array written, are silenced here, where
the store is written, and nowhere else.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputError, MappingCancelled

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
    """Write a result AnnData into ``path`` (a new temporary file or folder) batch by batch.

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
    zarr
        Write an AnnData zarr store (version 3) instead of ``.h5ad``.
    stop
        Asked between the arrays and row runs a batch writes, and before the end's ``obs``,
        ``var`` and ``uns``: ``True`` stops the writing with
        :class:`~napari_spatial_impute.MappingCancelled` (the caller removes the file).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        obs: pd.DataFrame,
        obsm: dict[str, Any],
        genes: list[str],
        *,
        zarr: bool,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.path = Path(path)
        self.zarr = zarr
        self._stop = stop
        self.n_obs = len(obs)
        self.genes = list(genes)
        self.written: list[int] = []
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

    # ------------------------------------------------------------------ arrays
    def _new_array(
        self, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any, fill: Any
    ) -> Any:
        if self.zarr:
            with _quiet():
                arr = self._root.create_array(
                    name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill
                )
        else:
            arr = self._root.create_dataset(
                name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=fill
            )
        arr.attrs["encoding-type"] = "array"
        arr.attrs["encoding-version"] = "0.2.0"
        return arr

    def _create(self, name: str, width: int, dtype: Any, fill: Any, chunk_cols: int) -> Any:
        shape = (self.n_obs, max(width, 0))
        chunks = (max(1, min(self.n_obs, CHUNK_ROWS)), max(1, min(width, chunk_cols)))
        return self._new_array(name, shape, chunks, dtype, fill)

    def _create_column(self, name: str, dtype: Any, fill: Any) -> Any:
        chunks = (max(1, min(self.n_obs, CHUNK_ROWS * 8)),)
        return self._new_array(name, (self.n_obs,), chunks, dtype, fill)

    def _frame(self, key: str, columns: list[str], dtype: Any) -> list[Any]:
        """An obsm DataFrame as anndata stores it, one array per column."""
        from anndata.io import write_elem

        index = pd.Index(self._obs_names(), name=None)
        with _quiet():
            write_elem(self._root, f"obsm/{key}", pd.DataFrame(index=index))
        group = self._root[f"obsm/{key}"]
        group.attrs["column-order"] = list(columns)
        fill = np.nan if np.dtype(dtype).kind == "f" else -1
        return [self._create_column(f"obsm/{key}/{c}", dtype, fill) for c in columns]

    def _obs_names(self) -> np.ndarray:
        from anndata.io import read_elem

        return np.asarray(read_elem(self._root["obs"]).index.astype(str))

    def _prepare(self, output: Any) -> None:
        """Create the arrays from the first mapped batch (its shapes and dtypes)."""
        self._arrays["X"] = self._create("X", len(self.genes), "float32", np.nan, CHUNK_GENES)
        for name in output.layers:
            self._arrays[f"layers/{name}"] = self._create(
                f"layers/{name}", len(self.genes), "float32", np.nan, CHUNK_GENES
            )
        for key, value in output.obsm.items():
            if isinstance(value, pd.DataFrame):
                dtype = np.result_type(*value.dtypes) if value.shape[1] else np.float32
                self._arrays[f"frame:{key}"] = self._frame(
                    key, list(map(str, value.columns)), dtype
                )
            else:
                arr = np.asarray(value)
                fill = np.nan if arr.dtype.kind == "f" else -1
                self._arrays[f"obsm/{key}"] = self._create(
                    f"obsm/{key}", arr.shape[1], arr.dtype, fill, 1 << 16
                )

    # ------------------------------------------------------------------ writing
    def _check_stop(self) -> None:
        if self._stop is not None and self._stop():
            raise MappingCancelled(f"writing {self.path.name} was cancelled")

    def write(self, output: Any) -> None:
        """Write one mapped batch's rows (a :class:`~napari_spatial_impute.core.batches.BatchOutput`)."""
        if output.index in self.written:
            raise RuntimeError(f"batch {output.name!r} was written already")
        if output.status != "mapped":
            self.written.append(output.index)
            return
        if not self._arrays:
            self._prepare(output)
        blocks: dict[str, Any] = {"X": output.X}
        blocks.update({f"layers/{k}": v for k, v in output.layers.items()})
        for key, value in output.obsm.items():
            if isinstance(value, pd.DataFrame):
                blocks[f"frame:{key}"] = value.to_numpy()
            else:
                blocks[f"obsm/{key}"] = np.asarray(value)
        offset = 0
        for start, stop in row_runs(output.rows):
            n = stop - start
            for name, block in blocks.items():
                self._check_stop()
                target = self._arrays.get(name)
                if target is None:
                    raise RuntimeError(f"batch {output.name!r} has {name!r}, the first had not")
                part = block[offset : offset + n]
                if isinstance(target, list):
                    for j, column in enumerate(target):
                        column[start:stop] = part[:, j]
                else:
                    target[start:stop] = part
            offset += n
        self.written.append(output.index)

    def finish(self, obs: pd.DataFrame, var: pd.DataFrame, uns: dict[str, Any]) -> None:
        """Write ``obs``, ``var`` and ``uns`` and close the file."""
        from anndata.io import write_elem

        if not self._arrays:  # nothing mapped: the caller refuses before this
            raise RuntimeError("no batch was mapped")
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


def row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted ``rows`` as ``[start, stop)`` runs of consecutive positions."""
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [rows.size]])
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]
