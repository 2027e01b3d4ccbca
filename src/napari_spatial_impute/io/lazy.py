"""Gene matrices read one gene (column) or a few cells (rows) at a time.

A viewer shows one gene at a time; a result's whole matrix (10^6 cells x 2,000 genes is 8 GB of
float32, as much again per interval level) is never needed at once. Lazy results hold ``X`` and
their interval layers as dask arrays whose blocks are whole columns of a few genes, computed only
when asked: from the map (:mod:`napari_spatial_impute.core.lazy_result`) or read from a result
file (:func:`read_result_lazy`, ``.h5ad`` or AnnData ``.zarr``). Writing such an AnnData
(``write_h5ad``, ``write_zarr``, a SpatialData table) goes block by block.

Each lazy array made here is registered with a :class:`Columns` reader under its dask name, so
:func:`column` gets one gene without computing its block's other genes and :func:`rows` a few
cells without computing every block; both work for any array (numpy, scipy sparse, h5py/zarr
arrays of a backed AnnData, other dask arrays). Columns of lazy arrays are kept in a small
least-recently-used cache (:data:`CACHE_COLUMNS` columns, :data:`CACHE_BYTES` at most): a
gene shown again is not computed again, and a new result's arrays have new names, so nothing
stale is ever returned.
"""

from __future__ import annotations

import os
import threading
import uuid
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from napari_spatial_impute._errors import InputError, first_line
from napari_spatial_impute.io._sparse import is_sparse

#: Columns kept by :func:`column` for lazy arrays (a few genes and their intervals).
CACHE_COLUMNS = 8
#: Bytes kept by :func:`column` at most (8 genes of 10^6 cells are 32 MB).
CACHE_BYTES = 256 << 20
#: Bytes of one block of a lazy array: its genes x all cells (64 MB: 16 genes of 10^6 cells).
BLOCK_BYTES = 64 << 20


class Columns(Protocol):
    """How a lazy array's values are computed or read."""

    def block(self, cols: slice) -> np.ndarray:
        """All cells x the columns ``cols`` (a dask block)."""

    def column(self, j: int) -> np.ndarray:
        """Column ``j`` at every cell (1-D)."""

    def rows(self, idx: np.ndarray) -> np.ndarray | None:
        """Rows ``idx`` x every column, or ``None`` when only blocks can give them."""


_READERS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_CACHE: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
_LOCK = threading.Lock()
#: Blocks of lazy arrays computed at once, whatever dask's thread count (a block of intervals at
#: 10^6 cells holds about 0.6 GB while it is computed; a write on 16 cores would hold 16).
MAX_BLOCKS = 4
_BLOCKS = threading.BoundedSemaphore(MAX_BLOCKS)


def block_genes(n_obs: int, itemsize: int = 4) -> int:
    """Genes per block so that a block (all cells) stays near :data:`BLOCK_BYTES`."""
    return max(1, BLOCK_BYTES // max(1, n_obs * itemsize))


def lazy_array(
    reader: Columns, shape: tuple[int, int], dtype: Any, step: int, prefix: str = "lazy"
) -> Any:
    """A dask array of ``shape`` whose blocks (all rows x ``step`` columns) are ``reader.block``.

    The graph holds ``reader``, and :func:`column` / :func:`rows` find it by the array's name.
    """
    import dask.array as da

    name = f"{prefix}-{uuid.uuid4().hex}"
    n_obs, n_cols = shape
    starts = list(range(0, n_cols, max(1, step))) or [0]
    widths = tuple(min(step, n_cols - a) for a in starts) if n_cols else (0,)
    graph = {
        (name, 0, k): (_block, reader, slice(a, a + w))
        for k, (a, w) in enumerate(zip(starts, widths, strict=True))
    }
    arr = da.Array(graph, name, chunks=((n_obs,), widths), dtype=dtype)  # type: ignore[no-untyped-call]
    _READERS[name] = reader
    return arr


def _block(reader: Columns, cols: slice) -> np.ndarray:
    """One block, at most :data:`MAX_BLOCKS` at a time (bounded memory while a result is
    written by dask's threads)."""
    with _BLOCKS:
        return reader.block(cols)


def reader_of(array: Any) -> Columns | None:
    """The registered reader of a lazy array made by :func:`lazy_array` (else ``None``)."""
    name = getattr(array, "name", None)
    return _READERS.get(name) if isinstance(name, str) else None


def is_lazy(array: Any) -> bool:
    """Whether ``array`` is a dask array (computed or read when sliced)."""
    return type(array).__module__.startswith("dask.")


def column(array: Any, j: int) -> np.ndarray:
    """Column ``j`` of a cells x genes array as a 1-D array (only that gene read or computed).

    Numpy, scipy sparse, h5py / zarr arrays (a backed AnnData) and dask arrays; a lazy array's
    columns are cached (see the module docstring). The array returned is the caller's to change.
    """
    j = int(j)
    if not is_lazy(array):
        if is_sparse(array):
            return np.asarray(array[:, [j]].toarray()).ravel()  # type: ignore[index]
        return np.array(array[:, j]).ravel()
    key = (str(array.name), j)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit.copy()
    reader = reader_of(array)
    if reader is not None:
        col = np.asarray(reader.column(j)).ravel()
    else:
        col = np.asarray(array[:, j].compute()).ravel()
        col = col.toarray().ravel() if is_sparse(col) else col
    with _LOCK:
        _CACHE[key] = col
        _CACHE.move_to_end(key)
        while len(_CACHE) > CACHE_COLUMNS or (
            len(_CACHE) > 1 and sum(v.nbytes for v in _CACHE.values()) > CACHE_BYTES
        ):
            _CACHE.popitem(last=False)
    return col.copy()


#: At most this many cells are read from a lazy array's rows by :func:`column_at` (more: the
#: whole column, cached).
FEW_CELLS = 64


def column_at(array: Any, j: int, idx: np.ndarray) -> np.ndarray:
    """Column ``j`` at the cells ``idx`` (1-D): a cached column, else, for a few cells of a lazy
    array whose reader gives rows, those cells alone (a clicked cell's value), else
    :func:`column`. ``idx``: row numbers, or a boolean mask of the rows."""
    idx = np.asarray(idx)
    idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64, copy=False)
    if is_lazy(array) and len(idx) <= FEW_CELLS:
        with _LOCK:
            hit = _CACHE.get((str(array.name), int(j)))
        if hit is not None:
            return hit[idx]
        reader = reader_of(array)
        got = reader.rows(idx) if reader is not None else None
        if got is not None:
            return np.asarray(got)[:, int(j)]
    return column(array, j)[idx]


def rows(array: Any, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` x every column as a dense 2-D array (a lazy array's other cells untouched
    when its reader can give rows; otherwise its blocks are computed one by one)."""
    idx = np.asarray(idx, dtype=np.int64)
    reader = reader_of(array) if is_lazy(array) else None
    got = reader.rows(idx) if reader is not None else None
    if got is not None:
        return np.asarray(got)
    if is_lazy(array):
        return np.asarray(array[idx].compute())
    if is_sparse(array):
        return np.asarray(sp.csr_matrix(array)[idx].toarray())
    if type(array).__module__.startswith(("h5py", "zarr")):
        return _sorted_rows(lambda sel: np.asarray(array[sel]), idx)
    return np.asarray(array[idx])


def mean_of_columns(array: Any) -> float:
    """Mean of the array's values ignoring NaN (NaN when empty or all NaN), a lazy array one
    block of genes at a time."""
    total, count = 0.0, 0
    blocks: Iterator[Any]
    if is_lazy(array):
        blocks = (array.blocks[:, k].compute() for k in range(array.numblocks[1]))
    else:
        blocks = iter([array.toarray() if is_sparse(array) else array[...]])
    for block in blocks:
        b = np.asarray(block, dtype=np.float64)
        ok = ~np.isnan(b)
        total += float(b[ok].sum())
        count += int(ok.sum())
    return total / count if count else float("nan")


def clear_cache() -> None:
    """Forget every cached column."""
    with _LOCK:
        _CACHE.clear()


def _sorted_rows(read: Callable[[np.ndarray], np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Rows of an on-disk array that takes only increasing unique indices, in ``idx``'s order."""
    uniq, inverse = np.unique(idx, return_inverse=True)
    return read(uniq)[inverse]


# --------------------------------------------------------------------------- result files
class FileColumns:
    """A dense 2-D array of an ``.h5ad`` file or a zarr store, opened for each read."""

    def __init__(self, path: str | os.PathLike[str], key: str, zarr: bool) -> None:
        self.path = str(path)
        self.key = key
        self.zarr = zarr

    def _read(self, sel: Any) -> np.ndarray:
        if self.zarr:
            import zarr

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = zarr.open_array(store=self.path, path=self.key, mode="r")
                return np.asarray(arr[sel])
        import h5py

        with h5py.File(self.path, "r") as f:
            return np.asarray(f[self.key][sel])

    def block(self, cols: slice) -> np.ndarray:
        return self._read((slice(None), cols))

    def column(self, j: int) -> np.ndarray:
        return self._read((slice(None), int(j))).ravel()

    def rows(self, idx: np.ndarray) -> np.ndarray:
        if self.zarr:
            return self._read((np.asarray(idx, dtype=np.int64), slice(None)))
        return _sorted_rows(lambda sel: self._read((sel, slice(None))), idx)


def is_dense(elem: Any) -> bool:
    """A 2-D dense array of the AnnData encoding (not a group: sparse, DataFrame, dict)."""
    return (
        str(elem.attrs.get("encoding-type", "array")) == "array"
        and hasattr(elem, "shape")
        and hasattr(elem, "dtype")
        and len(elem.shape) == 2
    )


def _disk_step(elem: Any) -> int:
    """Columns per block: the array's own column chunk, grown towards :data:`BLOCK_BYTES`."""
    n_obs = int(elem.shape[0])
    fit = block_genes(n_obs, np.dtype(elem.dtype).itemsize)
    chunks = getattr(elem, "chunks", None)
    own = int(chunks[1]) if chunks else 0
    return max(own, (fit // own) * own) if 0 < own <= fit else fit


def read_result_lazy(path: str | os.PathLike[str], role: str = "result") -> Any:
    """A result file (``.h5ad`` or AnnData ``.zarr``) with ``X`` and the dense ``layers`` left on
    disk: dask arrays read block by block, one gene by :func:`column`. Everything else (``obs``,
    ``var``, ``obsm``, ``uns``...) is read into memory. Fails with one line naming the file."""
    import anndata as ad
    from anndata.io import read_elem

    p = Path(path)
    zarr_store = p.is_dir()
    if not p.exists():
        raise InputError(f"{role} file {str(p)!r} does not exist; check the path.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if zarr_store:
                import zarr

                root: Any = zarr.open_group(str(p), mode="r")
                closer: Callable[[], None] = lambda: None  # noqa: E731
            else:
                import h5py

                root = h5py.File(p, "r")
                closer = root.close
            try:
                parts: dict[str, Any] = {
                    k: read_elem(root[k])
                    for k in ("obs", "var", "obsm", "varm", "obsp", "varp", "uns")
                    if k in root
                }
                lazy: dict[str, Any] = {}
                for key in ["X", *(f"layers/{k}" for k in (root.get("layers") or {}))]:
                    if key not in root:
                        continue
                    elem = root[key]
                    if is_dense(elem):
                        reader = FileColumns(p, key, zarr_store)
                        lazy[key] = lazy_array(
                            reader, tuple(elem.shape), elem.dtype, _disk_step(elem), "read"
                        )
                    else:
                        lazy[key] = read_elem(elem)
            finally:
                closer()
    except Exception as exc:  # h5py/zarr/anndata raise many types for a broken file
        raise InputError(
            f"cannot read {role} file {str(p)!r} ({first_line(exc)}); give an AnnData file "
            "written by anndata or this plugin."
        ) from None
    adata = ad.AnnData(X=lazy.get("X"), **parts)
    for key, value in lazy.items():
        if key.startswith("layers/"):
            adata.layers[key[len("layers/") :]] = value
    return adata
