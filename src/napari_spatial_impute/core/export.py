"""The mapping result as one AnnData that round-trips through ``.h5ad``.

Layout of a result (spatial cells x reference genes):

* ``X``: imputed values (float32), all reference genes unless a subset was asked for.
* ``obs``: the spatial ``obs`` as given, plus ``<key>_predicted`` (most likely cluster,
  categorical), ``mapped_unit`` (argmax reference cell or cluster) and ``mapped_share``.
* ``obsm``: the spatial ``obsm`` as given (``spatial`` included), plus ``cluster_probabilities``
  (DataFrame, one float32 column per category, rows sum to 1), ``measured`` (the spatial values
  as given, spatial gene names), ``mapping_top_index`` / ``mapping_top_share`` (the best
  reference units per spatial cell).
* ``var``: the reference ``var``, plus ``is_training``, ``is_shared``, ``measured_name``,
  ``train_score``, ``sparsity_sc``, ``sparsity_sp``, ``sparsity_diff`` and ``dropped_reason``.
* ``uns["spatial_impute"]``: parameters, per-epoch history, training score, units, timings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._version import __version__
from napari_spatial_impute.core.project import (
    mapped_units,
    project_cell_annotations,
    resolve_method,
    resolve_reference_genes,
    top_mapped_units,
)
from napari_spatial_impute.core.section_output import (
    fill_outputs,
    pending_summaries,
    set_summaries,
    write_summaries,
)
from napari_spatial_impute.io._sparse import is_sparse
from napari_spatial_impute.io.schema import SDATA_KEY, UNS_KEY, interval_layer, level_name

if TYPE_CHECKING:
    from napari_spatial_impute.core.result import MappingResult


def result_to_anndata(
    result: MappingResult,
    genes: Sequence[str] | None = None,
    method: str = "auto",
    top_k: int = 10,
    impute: bool = True,
    summaries: tuple[pd.Series, dict[float, float]] | None = None,
) -> ad.AnnData:
    """Assemble the spatial result AnnData (see the module docstring for its layout).

    Parameters
    ----------
    result
        A learned mapping.
    genes
        Reference genes to impute; ``None`` imputes all of them.
    method
        Projection for ``X`` (see :func:`~napari_spatial_impute.core.project.project_genes`).
    top_k
        Best reference units kept per spatial cell in ``obsm``.
    impute
        ``False`` leaves ``X`` empty (``None``) for :func:`write_result` to fill in chunks.
    summaries
        The per-gene summaries of :func:`~napari_spatial_impute.core.uncertainty.gene_summaries`
        when computed already (:func:`~napari_spatial_impute.core.section_output.impute_in_chunks`
        gives them with the values: ``impute=True`` takes them from its own pass).
    """
    method = resolve_method(result, method)
    spatial = result.spatial
    names = resolve_reference_genes(result, genes)
    var = result.reference.var.loc[names].copy()
    var["is_training"] = np.isin(names, result.genes.training_reference)
    cal = result.calibration if method == resolve_method(result, "auto") else None
    X = None
    layers: dict[float, np.ndarray] = {}
    if impute:
        # filled a block of genes and cells at a time: no array beyond the output and one block
        shape = (spatial.n_obs, len(names))
        arrays: dict[str, np.ndarray] = {}
        got = fill_outputs(
            result, names, method, lambda a: arrays.setdefault(a, np.empty(shape, np.float32))
        )
        summaries = got if summaries is None else summaries
        X = arrays["X"]
        for lv in cal.levels if cal else ():
            layers[lv] = arrays[f"layers/{interval_layer(level_name(lv))}"]
    out = ad.AnnData(X=X, obs=spatial.obs.copy(), var=var)
    if SDATA_KEY in spatial.uns:  # read from a SpatialData store: where its cells came from
        out.uns[SDATA_KEY] = dict(spatial.uns[SDATA_KEY])
    for k, v in spatial.obsm.items():
        out.obsm[k] = v.copy() if hasattr(v, "copy") else v
    measured = spatial.X.toarray() if is_sparse(spatial.X) else np.asarray(spatial.X)
    out.obsm["measured"] = pd.DataFrame(
        measured.astype(np.float32, copy=False),
        index=spatial.obs_names.copy(),
        columns=list(map(str, spatial.var_names)),
    )

    plan = result.genes
    sp_name = dict(zip(plan.shared_reference, plan.shared_spatial, strict=True))
    out.var["is_shared"] = [g in sp_name for g in names]
    out.var["measured_name"] = [sp_name.get(g, "") for g in names]
    tdf = result.train_genes_df
    for col in ("train_score", "sparsity_sc", "sparsity_sp", "sparsity_diff"):
        out.var[col] = tdf[col].reindex(names).to_numpy(dtype=np.float64)
    out.var["dropped_reason"] = [plan.dropped.get(g, "") for g in names]
    if cal is not None:
        from napari_spatial_impute.core.uncertainty import gene_summaries

        predicted, widths = (
            summaries if summaries is not None else gene_summaries(result, cal, names)
        )
        out.var["predicted_pearson"] = predicted.to_numpy(dtype=np.float64)
        out.obs["uncertainty_group"] = pd.Categorical.from_codes(
            cal.groups, categories=cal.group_names
        )
        for lv, hw in layers.items():
            out.layers[interval_layer(level_name(lv))] = hw

    key = result.cluster_key
    if key:
        probs = project_cell_annotations(result, key)
        out.obsm["cluster_probabilities"] = probs
        best = probs.to_numpy().argmax(axis=1)
        out.obs[f"{key}_predicted"] = pd.Categorical.from_codes(best, categories=probs.columns)
        out.obs[f"{key}_predicted_probability"] = probs.to_numpy().max(axis=1).astype(np.float32)
    unit_idx, share = mapped_units(result)
    units = np.asarray(result.unit_names, dtype=object)
    out.obs["mapped_unit"] = pd.Categorical(units[unit_idx])
    out.obs["mapped_share"] = share
    top_i, top_s = top_mapped_units(result, top_k)
    out.obsm["mapping_top_index"] = top_i
    out.obsm["mapping_top_share"] = top_s

    info: dict[str, Any] = {
        "version": __version__,
        "params": dict(result.params),
        "history": {k: np.asarray(v, dtype=np.float64) for k, v in result.history.items()},
        "training_score": result.training_score,
        "training_genes": np.asarray(plan.training_reference, dtype=object),
        "shared_genes": np.asarray(plan.shared_reference, dtype=object),
        "dropped_genes": np.asarray(list(plan.dropped), dtype=object),
        "dropped_reasons": np.asarray(list(plan.dropped.values()), dtype=object),
        "units": np.asarray(result.unit_names, dtype=object),
        "unit_kind": "cluster" if result.mode == "clusters" else "reference cell",
        "projection": method,
        "timings": {k: float(v) for k, v in result.timings.items()},
    }
    if cal is not None:
        info["uncertainty"] = {
            "levels": np.asarray(cal.levels, dtype=np.float64),
            "group_names": np.asarray(cal.group_names, dtype=object),
            "quantiles": np.asarray(cal.quantiles, dtype=np.float64),
            "offset": float(cal.offset),
            "platform_scale": float(cal.scale),
            "reliability_coef": np.asarray(cal.coef, dtype=np.float64),
            "calibration_genes": np.asarray(cal.calibration_genes, dtype=object),
            "inner_pearson": np.asarray(cal.inner_pearson, dtype=np.float64),
            # mean interval width of each level (cal.levels' order) over these cells and genes:
            # a viewer shows it without reading every gene's intervals
            "mean_width": np.asarray([widths[lv] for lv in cal.levels], dtype=np.float64),
            "mean_width_shape": np.asarray([out.n_obs, len(names)], dtype=np.int64),
            "method": (
                "conformal (Mondrian by cell group) on training genes held out of the "
                f"{result.params.get('method', '')} map"
            ),
        }
    if result.choice is not None:
        info["map_choice"] = dict(result.choice)
    if key:
        info["cluster_key"] = key
        info["cluster_categories"] = np.asarray(
            list(out.obsm["cluster_probabilities"].columns), dtype=object
        )
    out.uns[UNS_KEY] = info
    return out


#: Imputed outputs larger than this are written in blocks (of genes and cells): the imputed
#: values and intervals of all of them at once hold several float64 copies of this size.
CHUNKED_WRITE_BYTES = 1 << 28


def write_result(
    result: MappingResult,
    path: str | os.PathLike[str],
    genes: Sequence[str] | None = None,
    method: str = "auto",
    chunk_genes: int | None = None,
    extra_uns: dict[str, Any] | None = None,
) -> ad.AnnData:
    """Write the result to ``.h5ad`` atomically, imputing in blocks of cells and genes when large.

    A dense spatial cells x all-genes matrix is never held in memory when it is larger than
    :data:`CHUNKED_WRITE_BYTES` (or when ``chunk_genes`` is given): ``X`` and the interval layers
    are created on disk and filled a block of cells x ``chunk_genes`` genes at a time
    (:func:`~napari_spatial_impute.core.section_output.fill_outputs`; one pass over the map gives
    the values, the intervals and the per-gene summaries, written last). The file is an ordinary
    AnnData file.

    Returns
    -------
    The result AnnData (with ``X = None`` when it was written in chunks).
    """
    import h5py

    from napari_spatial_impute.io.files import atomic_output, write_h5ad_atomic

    names = resolve_reference_genes(result, genes)
    method = resolve_method(result, method)
    n_obs = result.spatial.n_obs
    size = 4 * n_obs * len(names)
    if chunk_genes is None and size <= CHUNKED_WRITE_BYTES:
        adata = result_to_anndata(result, genes=names, method=method)
        if extra_uns:
            adata.uns[UNS_KEY].update(extra_uns)
        write_h5ad_atomic(adata, path)
        return adata
    levels = _levels(result, method)
    pending = pending_summaries(names, levels)
    adata = result_to_anndata(result, genes=names, method=method, impute=False, summaries=pending)
    if extra_uns:
        adata.uns[UNS_KEY].update(extra_uns)
    with atomic_output(path) as tmp:
        adata.write_h5ad(tmp)
        with h5py.File(tmp, "r+") as f:
            if "X" in f:
                del f["X"]

            def create(name: str) -> Any:
                group, _, key = name.rpartition("/")
                parent = f.require_group(group) if group else f
                if group:
                    parent.attrs.setdefault("encoding-type", "dict")
                    parent.attrs.setdefault("encoding-version", "0.1.0")
                shape = (n_obs, len(names))
                ds = parent.create_dataset(key, shape=shape, dtype="float32", chunks=_chunks(shape))
                ds.attrs["encoding-type"] = "array"
                ds.attrs["encoding-version"] = "0.2.0"
                return ds

            summaries = fill_outputs(result, names, method, create, band_genes=chunk_genes)
            if summaries is not None and levels is not None:
                write_summaries(f, summaries, levels)
                set_summaries(adata, summaries, levels)
    return adata


def _levels(result: MappingResult, method: str) -> list[float] | None:
    """The interval levels of the result's calibration for projection ``method`` (its own)."""
    cal = result.calibration if method == resolve_method(result, "auto") else None
    return None if cal is None else list(cal.levels)


def _chunks(shape: tuple[int, int]) -> tuple[int, int]:
    return (max(1, min(shape[0], 4096)), max(1, min(shape[1], 64)))


# --------------------------------------------------------------------------- SpatialData stores
def _column_names(names: list[str]) -> list[str]:
    """Column names spatialdata takes (letters, digits, ``_ - .``; not ``__x``, not ``_index``;
    unique ignoring case): others get ``_`` for each character it refuses (``gene name`` ->
    ``gene_name``) and a number when that name is taken."""
    from napari_spatial_impute.io.sdata_write import column_char_ok

    taken: set[str] = set()
    out = []
    for name in names:
        fixed = "".join(c if column_char_ok(c) else "_" for c in name) or "column"
        if fixed.startswith("__") or fixed in ("_index", ".", ".."):
            fixed = "v" + fixed
        candidate, n = fixed, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{fixed}_{n}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def store_table(adata: ad.AnnData) -> ad.AnnData:
    """The result as a table annotating the cells it was read from (same region and instance ids).

    ``X`` (imputed genes, may be ``None`` for a chunked write), ``obs`` (the cell table's columns,
    the most likely cluster and its probability), ``obsm`` (cluster probabilities, best mapped
    units; the measured values are left out: they are the store's own table),
    ``layers`` (interval half-widths), ``uns['<cluster>_predicted_colors']`` (the viewer's colours,
    scanpy's convention) and ``uns['spatial_impute']`` (the run's parameters).
    """
    from spatialdata.models import TableModel

    from napari_spatial_impute._errors import InputError
    from napari_spatial_impute.io.palette import category_colors, stored_palette
    from napari_spatial_impute.io.sdata import spatial_source

    src = spatial_source(adata)
    if src is None:
        raise InputError(
            "the spatial data were not read from a SpatialData store, so the results have no "
            "cells to annotate there; write them as .h5ad."
        )
    region_key, instance_key = str(src["region_key"]), str(src["instance_key"])
    obs = adata.obs.copy()
    obs[region_key] = pd.Categorical(obs[region_key].astype(str))
    var = adata.var.copy()
    var.columns = _column_names([str(c) for c in var.columns])  # the reference's own columns
    table = ad.AnnData(
        X=adata.X,
        obs=obs,
        var=var,
        obsm={k: v for k, v in adata.obsm.items() if k != "measured"},
        layers=dict(adata.layers.items()),
        uns=dict(adata.uns),
    )
    key = adata.uns.get(UNS_KEY, {}).get("cluster_key")
    column = f"{key}_predicted" if key else None
    if column and column in obs and isinstance(obs[column].dtype, pd.CategoricalDtype):
        colors = category_colors(obs[column].cat.categories, stored_palette(adata.uns, column))
        table.uns[f"{column}_colors"] = np.asarray(list(colors.values()), dtype=object)
    regions = [str(r) for r in src["regions"]]
    return TableModel.parse(
        table,
        region=regions[0] if len(regions) == 1 else regions,  # as the cell table spells it
        region_key=region_key,
        instance_key=instance_key,
    )


def write_result_to_store(
    result: MappingResult,
    store: str | os.PathLike[str],
    name: str | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    genes: Sequence[str] | None = None,
    method: str = "auto",
    chunk_genes: int | None = None,
    extra_uns: dict[str, Any] | None = None,
) -> ad.AnnData:
    """Write the result as a new table of the SpatialData store its spatial cells came from.

    The table annotates the same region with the same instance ids (:func:`store_table`); it is
    written beside the store and renamed into ``tables/`` (see
    :func:`~napari_spatial_impute.io.sdata_write.write_table`), imputed ``chunk_genes`` genes at a
    time when the values exceed :data:`CHUNKED_WRITE_BYTES`. ``out`` writes into a copy.

    Returns
    -------
    The table (``X = None`` when it was written in chunks).
    """
    from napari_spatial_impute.io.schema import RESULT_TABLE
    from napari_spatial_impute.io.sdata_write import check_table_target, write_table

    name = RESULT_TABLE if name is None else name
    check_table_target(store, name, out=out, overwrite=overwrite)
    names = resolve_reference_genes(result, genes)
    method = resolve_method(result, method)
    n_obs = result.spatial.n_obs
    chunked = chunk_genes is not None or 4 * n_obs * len(names) > CHUNKED_WRITE_BYTES
    levels = _levels(result, method)
    pending = pending_summaries(names, levels) if chunked else None
    adata = result_to_anndata(
        result, genes=names, method=method, impute=not chunked, summaries=pending
    )
    if extra_uns:
        adata.uns[UNS_KEY].update(extra_uns)
    table = store_table(adata)
    fill = None
    if chunked:

        def fill(group: Any, check: Callable[[], None]) -> None:
            def create(name: str) -> Any:
                sub, _, key = name.rpartition("/")
                parent = group.require_group(sub) if sub else group
                shape = (n_obs, len(names))
                arr = parent.create_array(key, shape=shape, dtype="float32", chunks=_chunks(shape))
                arr.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
                return arr

            summaries = fill_outputs(
                result, names, method, create, check=check, band_genes=chunk_genes
            )
            if summaries is not None and levels is not None:  # from the same pass
                write_summaries(group, summaries, levels)
                set_summaries(table, summaries, levels)

    write_table(table, store, name, out=out, overwrite=overwrite, fill=fill)
    return table
