"""A batch's per-cell arrays, written beside the output as they are computed (staging).

A batch of a batched run (:mod:`napari_spatial_impute.core.batch_run`) computes its imputed
genes a chunk of cells at a time (:mod:`napari_spatial_impute.core.section_output`). Each chunk
goes into the batch's staging files: one ``.npy`` file per array (``X``, the interval layers,
``obsm`` arrays and frames), rows in the batch's order, in the run's staging folder beside the
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
    """One per-cell array of a batch: a ``.npy`` file (``path``) or an array in memory (``data``).

    ``name`` is where it goes in the output: ``"X"``, ``"layers/<name>"``, ``"obsm/<key>"``
    (an array) or ``"frame:<key>"`` (a DataFrame of ``columns``, one output array per column).
    """

    name: str
    shape: tuple[int, int]
    dtype: str
    path: str | None = None
    data: np.ndarray | None = None
    columns: tuple[str, ...] | None = None

    def read(self) -> np.ndarray:
        """The values (a read-only memory map of the file)."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        values: np.ndarray = np.load(self.path, mmap_mode="r")
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
    """The arrays of one batch, written a block at a time: files in ``folder``, or in memory.

    ``create`` gives an array to fill (a writable memory map of a new ``.npy`` file, or a plain
    array); :meth:`staged` describes what was written, for the client.
    """

    def __init__(self, folder: str | None, batch_index: int) -> None:
        self.folder = folder
        self.prefix = f"b{batch_index}"
        self._arrays: dict[str, tuple[Staged, Any]] = {}

    def create(
        self, name: str, shape: tuple[int, int], dtype: Any, columns: list[str] | None = None
    ) -> np.ndarray:
        """A new array ``name`` of ``shape`` for the caller to fill, every value of it."""
        dtype = np.dtype(dtype)
        cols = tuple(columns) if columns is not None else None
        if self.folder is None:
            array = np.empty(shape, dtype=dtype)
            staged = Staged(name, shape, dtype.str, data=array, columns=cols)
        else:
            path = os.path.join(self.folder, f"{self.prefix}-{len(self._arrays)}.npy")
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            staged = Staged(name, shape, dtype.str, path=path, columns=cols)
        self._arrays[name] = (staged, array)
        return array

    def put(self, name: str, values: Any, columns: list[str] | None = None) -> None:
        """Stage a whole array at once (the small per-cell ``obsm`` arrays)."""
        values = np.asarray(values)
        self.create(name, (values.shape[0], values.shape[1]), values.dtype, columns)[...] = values

    def staged(self) -> list[Staged]:
        """What was staged (files flushed)."""
        out = []
        for staged, array in self._arrays.values():
            if isinstance(array, np.memmap):
                array.flush()
            out.append(staged)
        return out


def stage_in_memory(staged: Staged, folder: Path, batch_index: int, number: int) -> Staged:
    """A batch's array that came back in memory, written into the client's staging folder."""
    if staged.data is None:
        return staged
    path = folder / f"c{batch_index}-{number}.npy"
    np.save(path, staged.data)
    return replace(staged, path=str(path), data=None)
