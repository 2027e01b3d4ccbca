"""A batch's per-cell arrays, written beside the output as they are computed (staging).

A batch of a batched run (:mod:`napari_spatial_impute.core.batch_run`) computes its imputed
genes a chunk of cells at a time (:mod:`napari_spatial_impute.core.section_output`). Each chunk
goes into the batch's staging files: one raw file per array (``X``, the interval layers,
``obsm`` arrays and frames; written with plain file calls, never mapped), rows in the batch's
order, in the run's staging folder beside the
output (:func:`make_stage_folder`), so that a worker process never holds its section's values
and never sends them through Dask: it returns the files' names
(:class:`Staged`). A worker that cannot see the folder (another machine, no shared disk) keeps
the arrays in memory and returns them; the client then stages them itself
(:func:`stage_in_memory`). The client assembles the output file from the staging files in the
output's own row order (:class:`~napari_spatial_impute.io.batch_out.BatchResultWriter`), whole
chunks at a time, and removes them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

#: The file in a staging folder that names its run (a worker writes there only when it sees it).
MARKER = "RUN"


@dataclass(frozen=True)
class Staged:
    """One per-cell array of a batch: a raw file (``path``) or an array in memory (``data``).

    ``name`` is where it goes in the output: ``"X"``, ``"layers/<name>"``, ``"obsm/<key>"``
    (an array) or ``"frame:<key>"`` (a DataFrame of ``columns``, one output array per column).
    A file holds the values band by band of ``band`` columns (each band's rows one after the
    other, so that a block of cells x a band is one contiguous write), or row by row when
    ``band`` is 0. Files are written and read with plain file calls, never mapped: a mapped
    file's pages count in the process's resident memory (a worker's memory limit).
    """

    name: str
    shape: tuple[int, int]
    dtype: str
    path: str | None = None
    data: np.ndarray | None = None
    columns: tuple[str, ...] | None = None
    band: int = 0

    def read(self) -> np.ndarray:
        """Every value (a small array, or a test's)."""
        return self.rows(0, self.shape[0], 0, self.shape[1])

    def rows(self, lo: int, hi: int, g0: int, g1: int) -> np.ndarray:
        """Rows ``lo:hi``, columns ``g0:g1``."""
        if self.data is not None:
            return self.data[lo:hi, g0:g1]
        assert self.path is not None
        dtype = np.dtype(self.dtype)
        n, width = self.shape
        if not self.band:
            flat = _read(self.path, dtype, (hi - lo) * width, lo * width)
            return flat.reshape(hi - lo, width)[:, g0:g1]
        out = np.empty((hi - lo, g1 - g0), dtype=dtype)
        for b in range(g0 // self.band, -(-g1 // self.band)):
            b0 = b * self.band
            bw = min(self.band, width - b0)
            flat = _read(self.path, dtype, (hi - lo) * bw, n * b0 + lo * bw)
            block = flat.reshape(hi - lo, bw)
            a, z = max(g0, b0), min(g1, b0 + bw)
            out[:, a - g0 : z - g0] = block[:, a - b0 : z - b0]
        return out


def _read(path: str, dtype: np.dtype[Any], count: int, start: int) -> np.ndarray:
    values: np.ndarray = np.fromfile(path, dtype=dtype, count=count, offset=start * dtype.itemsize)
    if values.size != count:
        raise OSError(f"staging file {path} is shorter than written")
    return values


def make_stage_folder(output: str | os.PathLike[str], run_id: str) -> Path:
    """A new staging folder beside ``output`` (``.<name>.<pid>.<random>.stage.tmp``: the next run
    writing the same output removes it when this process was killed) with its run marker."""
    target = Path(output)
    parent = target.parent if str(target.parent) else Path(".")
    folder = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".stage.tmp", dir=parent)
    )
    (folder / MARKER).write_text(run_id)
    return folder


def remove_stage_folder(folder: Path | None) -> None:
    """Remove a staging folder and what is left in it."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def usable_folder(folder: str | None, run_id: str) -> str | None:
    """``folder`` when this process sees the staging folder of run ``run_id``, else ``None``."""
    if not folder:
        return None
    try:
        return folder if (Path(folder) / MARKER).read_text() == run_id else None
    except OSError:
        return None


class BatchStage:
    """The arrays of one batch, written a block at a time: raw files in ``folder``, or in memory.

    :meth:`create` starts an array of known shape written block by block (:meth:`write`,
    blocks of whole bands of ``band`` columns), :meth:`put` stages a whole small array;
    :meth:`staged` describes what was written, for the client.
    """

    def __init__(self, folder: str | None, batch_index: int) -> None:
        self.folder = folder
        self.prefix = f"b{batch_index}"
        self._arrays: dict[str, Staged] = {}

    def _path(self) -> str | None:
        if self.folder is None:
            return None
        return os.path.join(self.folder, f"{self.prefix}-{len(self._arrays)}.raw")

    def create(self, name: str, shape: tuple[int, int], dtype: Any, band: int) -> None:
        """A new array ``name`` of ``shape``, to be written in blocks of whole ``band``-column
        bands (every value of it)."""
        dtype = np.dtype(dtype)
        path = self._path()
        if path is None:
            staged = Staged(name, shape, dtype.str, data=np.empty(shape, dtype=dtype))
        else:
            with open(path, "wb") as f:
                f.truncate(shape[0] * shape[1] * dtype.itemsize)
            staged = Staged(name, shape, dtype.str, path=path, band=band)
        self._arrays[name] = staged

    def write(self, name: str, cells: slice, genes: slice, block: np.ndarray) -> None:
        """Write ``block`` at rows ``cells`` and columns ``genes`` (one whole band, or part of the
        last) of array ``name``."""
        staged = self._arrays[name]
        if staged.data is not None:
            staged.data[cells, genes] = block
            return
        assert staged.path is not None
        n, width = staged.shape
        b0 = genes.start
        if b0 % staged.band or genes.stop != min(b0 + staged.band, width):
            raise ValueError(f"block columns {b0}:{genes.stop} are not one band of {name!r}")
        bw = genes.stop - b0
        data = np.ascontiguousarray(block, dtype=np.dtype(staged.dtype))
        offset = (n * b0 + cells.start * bw) * data.itemsize
        with open(staged.path, "r+b") as f:
            f.seek(offset)
            f.write(data.tobytes())

    def put(self, name: str, values: Any, columns: list[str] | None = None) -> None:
        """Stage a whole array at once (the small per-cell ``obsm`` arrays), row by row."""
        values = np.ascontiguousarray(values)
        shape = (values.shape[0], values.shape[1])
        cols = tuple(columns) if columns is not None else None
        path = self._path()
        if path is None:
            staged = Staged(name, shape, values.dtype.str, data=values, columns=cols)
        else:
            values.tofile(path)
            staged = Staged(name, shape, values.dtype.str, path=path, columns=cols)
        self._arrays[name] = staged

    def staged(self) -> list[Staged]:
        """What was staged."""
        return list(self._arrays.values())


def stage_in_memory(staged: Staged, folder: Path, batch_index: int, number: int) -> Staged:
    """A batch's array that came back in memory, written into the client's staging folder."""
    if staged.data is None:
        return staged
    path = folder / f"c{batch_index}-{number}.raw"
    np.ascontiguousarray(staged.data).tofile(path)
    return replace(staged, path=str(path), data=None, band=0)
