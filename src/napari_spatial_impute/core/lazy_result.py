"""The result AnnData with its genes computed from the map when they are read.

:func:`lazy_result` gives the layout of :func:`~napari_spatial_impute.core.export.result_to_anndata`
with ``X`` (imputed genes) and the interval layers as dask arrays over the map: a block is a few
genes at every cell, computed by the same projection as the eager result
(:func:`~napari_spatial_impute.core.project.project_values`, the intervals of
:func:`~napari_spatial_impute.core.section_output.impute_in_chunks`), and
:func:`napari_spatial_impute.io.lazy.column` computes one gene alone. A viewer holding it holds
the map, not 10^6 cells x 2,000 genes; writing it (``write_h5ad``, a store's table) goes block by
block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np

from napari_spatial_impute.core.project import (
    mapped_units,
    project_values,
    resolve_method,
    resolve_reference_genes,
)
from napari_spatial_impute.io.lazy import block_genes, lazy_array
from napari_spatial_impute.io.schema import interval_layer, level_name

if TYPE_CHECKING:
    from napari_spatial_impute.core.result import MappingResult


def lean_result(result: MappingResult, method: str) -> MappingResult:
    """The parts of ``result`` that projection ``method`` and intervals read: the spatial data's
    values and their transformed copy are left out (the spatial ``obs_names`` kept), and for the
    ensemble's ``W S`` (``"neighbours"``) the map's transposed copy ``probabilities`` too (an
    empty matrix of its shape), so a lazy result holds the map once and no second copy of the
    measured values."""
    import scipy.sparse as sp

    cells = ad.AnnData(obs=result.spatial.obs.iloc[:, :0].copy())
    P = result.probabilities
    if method == "neighbours":
        P = sp.csr_matrix(P.shape, dtype=P.dtype)
    return dataclasses.replace(result, spatial=cells, spatial_values=cells, probabilities=P)


class ImputedColumns:
    """Imputed genes ``names`` of a result, computed a block, a gene or a few cells at a time."""

    def __init__(self, result: MappingResult, names: Sequence[str], method: str) -> None:
        self.result = result
        self.method = method
        self.col_idx = result.reference.var_names.get_indexer(list(names))
        self.unit_idx = mapped_units(result)[0] if method == "argmax" else None

    def _values(self, idx: np.ndarray, cells: np.ndarray | None = None) -> np.ndarray:
        return project_values(self.result, idx, self.method, cells=cells, unit_idx=self.unit_idx)

    def block(self, cols: slice) -> np.ndarray:
        return self._values(self.col_idx[cols])

    def column(self, j: int) -> np.ndarray:
        return self._values(self.col_idx[j : j + 1])[:, 0]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self._values(self.col_idx, cells=idx)


class IntervalColumns:
    """Half-widths of one level's prediction intervals for genes ``names``."""

    def __init__(self, result: MappingResult, names: Sequence[str], level: float) -> None:
        self.result = result
        self.names = list(names)
        self.level = level

    def block(self, cols: slice) -> np.ndarray:
        # a block of cells at a time: the intervals' float64 arrays are one block's, not all
        # cells x these genes (the same numbers, each cell from its own row of the map)
        from napari_spatial_impute.core import section_output

        names = self.names[cols]
        out = np.empty((self.result.spatial.n_obs, len(names)), dtype=np.float32)
        layer = f"layers/{interval_layer(level_name(self.level))}"

        def put(name: str, cells: slice, genes: slice, block: np.ndarray) -> None:
            if name == layer:
                out[cells, genes] = block

        # bands of BAND_GENES genes: one band of the reference is made dense at a time, however
        # many genes a block has
        method = resolve_method(self.result, "auto")
        chunk = section_output.CHUNK_CELLS
        section_output.impute_in_chunks(
            self.result, names, method, put, chunk_cells=chunk, values=False
        )
        return out

    def column(self, j: int) -> np.ndarray:
        return self.block(slice(j, j + 1))[:, 0]

    def rows(self, idx: np.ndarray) -> None:
        return None  # a cell's intervals of every gene: the blocks (no viewer reads them)


def lazy_result(
    result: MappingResult,
    genes: Sequence[str] | None = None,
    method: str = "auto",
    step: int | None = None,
) -> ad.AnnData:
    """The result AnnData of :func:`~napari_spatial_impute.core.export.result_to_anndata`, its
    ``X`` and interval layers computed from the map when read (``step`` genes per block; by
    default a block of all cells is near :data:`~napari_spatial_impute.io.lazy.BLOCK_BYTES`)."""
    from napari_spatial_impute.core.export import result_to_anndata
    from napari_spatial_impute.core.section_output import impute_in_chunks

    method = resolve_method(result, method)
    names = resolve_reference_genes(result, genes)
    # the per-gene summaries of the eager result's own pass (the same numbers), its values not
    # kept: a block of cells at a time
    summaries = impute_in_chunks(result, names, method, lambda *_: None, values=False)
    adata = result_to_anndata(result, genes=names, method=method, impute=False, summaries=summaries)
    lean = lean_result(result, method)
    n_obs = result.spatial.n_obs
    step = step or block_genes(n_obs)
    shape = (n_obs, len(names))
    adata.X = lazy_array(ImputedColumns(lean, names, method), shape, np.float32, step, "imputed")
    cal = result.calibration if method == resolve_method(result, "auto") else None
    if cal is not None:
        for lv in cal.levels:
            reader = IntervalColumns(lean, names, lv)
            adata.layers[interval_layer(level_name(lv))] = lazy_array(
                reader, shape, np.float32, step, "interval"
            )
    return adata
