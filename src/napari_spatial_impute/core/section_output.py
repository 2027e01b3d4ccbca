"""A result's imputed genes and prediction intervals, a chunk of cells at a time.

:func:`impute_in_chunks` computes ``X`` and the interval half-widths of a mapped section for a
band of genes and a chunk of cells at a time and hands each block to ``put`` (a batch's staging
files, an output array), so that no process holds a section x genes array: memory is bounded by
:data:`CHUNK_CELLS` x :data:`BAND_GENES`, whatever the section's cells and the genes imputed. The
map's ``W S`` and ``W S²`` are computed once per block and serve the values, the intervals and
the per-gene summaries (:func:`~napari_spatial_impute.core.uncertainty.gene_summaries`'s
reliability and mean widths, accumulated over the chunks) alike: one pass where the whole-array
path makes three. Each value is the same number as
:func:`~napari_spatial_impute.core.export.result_to_anndata` gives (each cell's row of the map
alone makes it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from napari_spatial_impute.core.project import mapped_units, project_values, resolve_method
from napari_spatial_impute.io._sparse import is_sparse
from napari_spatial_impute.io.schema import interval_layer, level_name

if TYPE_CHECKING:
    from napari_spatial_impute.core.result import MappingResult

#: Cells per chunk.
CHUNK_CELLS = 8192
#: Genes per band (a multiple of the output files' gene chunks).
BAND_GENES = 256

#: ``put(name, cells, genes, block)``: write ``block`` at rows ``cells`` and columns ``genes``
#: of the array ``name`` (``"X"`` or a ``layers/...`` name).
Put = Callable[[str, slice, slice, np.ndarray], None]


def output_arrays(result: MappingResult, method: str) -> list[str]:
    """Names of the gene arrays :func:`impute_in_chunks` writes: ``X`` and, when the result is
    calibrated for this projection, each level's ``layers/interval_<level>_halfwidth``."""
    cal = _calibration(result, method)
    levels = [] if cal is None else list(cal.levels)
    return ["X", *(f"layers/{interval_layer(level_name(lv))}" for lv in levels)]


def _calibration(result: MappingResult, method: str) -> Any:
    return result.calibration if method == resolve_method(result, "auto") else None


def impute_in_chunks(
    result: MappingResult,
    names: Sequence[str],
    method: str,
    put: Put,
    *,
    check: Callable[[], None] | None = None,
    chunk_cells: int = CHUNK_CELLS,
    band_genes: int = BAND_GENES,
    values: bool = True,
) -> tuple[pd.Series, dict[float, float]] | None:
    """Impute ``names`` (reference genes) with projection ``method`` (resolved) into ``put``.

    Returns the per-gene summaries of :func:`~napari_spatial_impute.core.uncertainty.gene_summaries`
    (predicted Pearson per gene, mean interval width per level) when the result is calibrated,
    else ``None``. ``check`` is called before each block (it raises to stop). ``values=False``
    leaves ``X`` out (the interval layers alone).
    """
    from napari_spatial_impute.core.uncertainty import map_operator, map_product, reference_features

    cal = _calibration(result, method)
    n_cells = result.spatial.n_obs
    idx = result.reference.var_names.get_indexer(list(names))
    ref = result.reference_values.X
    unit_idx = mapped_units(result)[0] if method == "argmax" else None
    chunks = [slice(a, min(a + chunk_cells, n_cells)) for a in range(0, n_cells, chunk_cells)]
    A = map_operator(result) if cal is not None else None
    # the map's rows of each chunk, kept for the next bands when there are several (one band:
    # each chunk's rows taken when used, so that no copy of the whole map is held)
    keep = A is not None and len(idx) > band_genes
    parts = [A[c] for c in chunks] if A is not None and keep else []
    r = [np.asarray(p.sum(axis=1), dtype=np.float64).reshape(-1, 1) for p in parts]
    layers = [f"layers/{interval_layer(level_name(lv))}" for lv in (cal.levels if cal else ())]
    q = None if cal is None else np.asarray(cal.quantiles)
    # per-gene sums over the cells (reliability features) and per-level width sums
    spread_sum = np.zeros(len(idx))
    pred_sum = np.zeros(len(idx))
    pred_sq = np.zeros(len(idx))
    width_sum = np.zeros(0 if cal is None else len(cal.levels))
    ref_feats = []
    for g0 in range(0, len(idx), band_genes):
        band = slice(g0, min(g0 + band_genes, len(idx)))
        cols = idx[band]
        S = S2 = None
        if A is not None:
            S = ref[:, cols]
            ref_feats.append(reference_features(S))
            # dense: a chunk's sparse rows times a dense band (the same sums as sparse x sparse,
            # :func:`~napari_spatial_impute.io._sparse.sparse_product`, about 3x faster). A dense
            # (Tangram) map keeps a sparse band: sparse x dense sums each value in one order,
            # whatever the band's width, where BLAS's order depends on the shapes
            if is_sparse(S) and is_sparse(A):
                S = S.toarray()
            S = S if is_sparse(S) else np.asarray(S)
            S2 = S.multiply(S) if is_sparse(S) else S * S
        for ci, cells in enumerate(chunks):
            if check is not None:
                check()
            if A is None:
                if values:
                    rows = np.arange(cells.start, cells.stop)
                    put("X", cells, band, project_values(result, cols, method, rows, unit_idx))
                continue
            assert cal is not None and q is not None and S is not None and S2 is not None
            part = parts[ci] if keep else A[cells]
            r_ci = r[ci] if keep else np.asarray(part.sum(axis=1), dtype=np.float64).reshape(-1, 1)
            mean = map_product(part, S)
            sq = map_product(part, S2)
            spread = np.sqrt(np.clip(r_ci * sq - mean * mean, 0, None))
            if not values:
                pass
            elif method == "neighbours":
                put("X", cells, band, np.asarray(mean, dtype=np.float32))
            else:
                rows = np.arange(cells.start, cells.stop)
                put("X", cells, band, project_values(result, cols, method, rows, unit_idx))
            scale = spread + cal.offset
            groups = cal.groups[cells]
            for li, name in enumerate(layers):
                put(name, cells, band, (scale * q[groups, li][:, None]).astype(np.float32))
            spread_sum[band] += spread.sum(axis=0)
            pred_sum[band] += mean.sum(axis=0)
            pred_sq[band] += (mean * mean).sum(axis=0)
            per_cell = scale.sum(axis=1)
            width_sum += q[groups].T @ per_cell
    if cal is None:
        return None
    n = max(n_cells, 1)
    pred_mean = pred_sum / n
    pred_sd = np.sqrt(np.clip(pred_sq / n - pred_mean * pred_mean, 0, None))
    F = np.column_stack(
        [
            np.concatenate(ref_feats) if ref_feats else np.zeros((0, 3)),
            np.log1p(spread_sum / n / (cal.offset + 1e-12)),
            np.log1p(pred_sd),
        ]
    )
    coef = np.asarray(cal.coef)
    pred_r = coef[0] + F @ coef[1:]
    total = max(n_cells * len(idx), 1)
    widths = {lv: float(2.0 * width_sum[li] / total) for li, lv in enumerate(cal.levels)}
    series = pd.Series(np.clip(pred_r, -1, 1), index=list(names), name="predicted_pearson")
    return series, widths


#: ``create(name)``: the array ``name`` of :func:`output_arrays` (cells x genes, float32), made
#: where the blocks go (an ``np.ndarray``, an h5py dataset, a zarr array).
Create = Callable[[str], Any]


def fill_outputs(
    result: MappingResult,
    names: Sequence[str],
    method: str,
    create: Create,
    *,
    check: Callable[[], None] | None = None,
    band_genes: int | None = None,
) -> tuple[pd.Series, dict[float, float]] | None:
    """:func:`impute_in_chunks` into the arrays ``create`` makes (``array[cells, genes] = block``,
    :data:`CHUNK_CELLS` cells x ``band_genes`` genes at a time, default :data:`BAND_GENES`: the
    chunks of the output files divide them); returns its per-gene summaries."""
    arrays = {name: create(name) for name in output_arrays(result, method)}

    def put(name: str, cells: slice, genes: slice, block: np.ndarray) -> None:
        arrays[name][cells, genes] = block

    return impute_in_chunks(
        result,
        names,
        method,
        put,
        check=check,
        chunk_cells=CHUNK_CELLS,
        band_genes=band_genes or BAND_GENES,
    )


def pending_summaries(
    names: Sequence[str], levels: Sequence[float] | None
) -> tuple[pd.Series, dict[float, float]] | None:
    """Placeholder summaries (NaN) for an AnnData written before its genes are imputed: the
    pass that fills them gives the numbers (:func:`set_summaries`, :func:`write_summaries`)."""
    if levels is None:
        return None
    nan = pd.Series(np.nan, index=list(names), name="predicted_pearson", dtype=np.float64)
    return nan, {lv: float("nan") for lv in levels}


def _summary_arrays(
    summaries: tuple[pd.Series, dict[float, float]], levels: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    predicted, widths = summaries
    return predicted.to_numpy(dtype=np.float64), np.asarray(
        [widths[lv] for lv in levels], dtype=np.float64
    )


def set_summaries(
    adata: Any, summaries: tuple[pd.Series, dict[float, float]], levels: Sequence[float]
) -> None:
    """Put the summaries into a result AnnData: ``var['predicted_pearson']`` and the uncertainty's
    ``mean_width`` (as :func:`~napari_spatial_impute.core.export.result_to_anndata` lays out)."""
    from napari_spatial_impute.io.schema import UNS_KEY

    predicted, widths = _summary_arrays(summaries, levels)
    adata.var["predicted_pearson"] = predicted
    adata.uns[UNS_KEY]["uncertainty"]["mean_width"] = widths


def write_summaries(
    group: Any, summaries: tuple[pd.Series, dict[float, float]], levels: Sequence[float]
) -> None:
    """Rewrite those two entries of a result AnnData written already to ``group`` (an h5py file
    or a zarr group of a table), with anndata's ``write_elem``."""
    from anndata.io import write_elem

    from napari_spatial_impute.io.schema import UNS_KEY

    predicted, widths = _summary_arrays(summaries, levels)
    write_elem(group["var"], "predicted_pearson", predicted)
    write_elem(group["uns"][UNS_KEY]["uncertainty"], "mean_width", widths)
