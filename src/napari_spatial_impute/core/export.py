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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._version import __version__
from napari_spatial_impute.core.project import (
    mapped_units,
    project_cell_annotations,
    project_genes,
    resolve_method,
    resolve_reference_genes,
    top_mapped_units,
)
from napari_spatial_impute.io._sparse import is_sparse
from napari_spatial_impute.io.schema import UNS_KEY, interval_layer

if TYPE_CHECKING:
    from napari_spatial_impute.core.result import MappingResult


def result_to_anndata(
    result: MappingResult,
    genes: Sequence[str] | None = None,
    method: str = "auto",
    top_k: int = 10,
    impute: bool = True,
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
    """
    method = resolve_method(result, method)
    spatial = result.spatial
    if impute:
        imputed = project_genes(result, genes=genes, method=method)
        X, var = imputed.X, imputed.var.copy()
    else:
        names = resolve_reference_genes(result, genes)
        X = None
        var = result.reference.var.loc[names].copy()
        var["is_training"] = np.isin(names, result.genes.training_reference)
    out = ad.AnnData(X=X, obs=spatial.obs.copy(), var=var)
    for k, v in spatial.obsm.items():
        out.obsm[k] = v.copy() if hasattr(v, "copy") else v
    measured = spatial.X.toarray() if is_sparse(spatial.X) else np.asarray(spatial.X)
    out.obsm["measured"] = pd.DataFrame(
        measured.astype(np.float32),
        index=spatial.obs_names.copy(),
        columns=list(map(str, spatial.var_names)),
    )

    plan = result.genes
    names = list(map(str, out.var_names))
    sp_name = dict(zip(plan.shared_reference, plan.shared_spatial, strict=True))
    out.var["is_shared"] = [g in sp_name for g in names]
    out.var["measured_name"] = [sp_name.get(g, "") for g in names]
    tdf = result.train_genes_df
    for col in ("train_score", "sparsity_sc", "sparsity_sp", "sparsity_diff"):
        out.var[col] = tdf[col].reindex(names).to_numpy(dtype=np.float64)
    out.var["dropped_reason"] = [plan.dropped.get(g, "") for g in names]
    cal = result.calibration if method == "neighbours" else None
    if cal is not None:
        from napari_spatial_impute.core.uncertainty import intervals, reliability
        from napari_spatial_impute.io.schema import level_name

        out.var["predicted_pearson"] = reliability(result, cal, names).to_numpy(dtype=np.float64)
        out.obs["uncertainty_group"] = pd.Categorical.from_codes(
            cal.groups, categories=cal.group_names
        )
        if impute:
            for lv, hw in intervals(result, cal, names).items():
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
            "method": "conformal (Mondrian by cell group) on inner k-fold over training genes",
        }
    if key:
        info["cluster_key"] = key
        info["cluster_categories"] = np.asarray(
            list(out.obsm["cluster_probabilities"].columns), dtype=object
        )
    out.uns[UNS_KEY] = info
    return out


#: Imputed outputs larger than this are written gene chunk by gene chunk.
CHUNKED_WRITE_BYTES = 1 << 30


def write_result(
    result: MappingResult,
    path: str | os.PathLike[str],
    genes: Sequence[str] | None = None,
    method: str = "auto",
    chunk_genes: int | None = None,
    extra_uns: dict[str, Any] | None = None,
) -> ad.AnnData:
    """Write the result to ``.h5ad`` atomically, imputing in gene chunks when it is large.

    A dense spatial cells x all-genes matrix is never held in memory when it is larger than
    :data:`CHUNKED_WRITE_BYTES` (or when ``chunk_genes`` is given): ``X`` is created on disk
    and filled ``chunk_genes`` genes at a time. The file is an ordinary AnnData file.

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
    step = chunk_genes or max(1, CHUNKED_WRITE_BYTES // (16 * max(n_obs, 1)))
    adata = result_to_anndata(result, genes=names, method=method, impute=False)
    if extra_uns:
        adata.uns[UNS_KEY].update(extra_uns)
    with atomic_output(path) as tmp:
        adata.write_h5ad(tmp)
        with h5py.File(tmp, "r+") as f:
            if "X" in f:
                del f["X"]
            dset = f.create_dataset(
                "X",
                shape=(n_obs, len(names)),
                dtype="float32",
                chunks=(min(n_obs, 4096), min(len(names), 64)),
            )
            dset.attrs["encoding-type"] = "array"
            dset.attrs["encoding-version"] = "0.2.0"
            cal = result.calibration if method == "neighbours" else None
            layer_sets = {}
            if cal is not None:
                from napari_spatial_impute.core.uncertainty import intervals
                from napari_spatial_impute.io.schema import level_name

                grp = f.require_group("layers")
                grp.attrs.setdefault("encoding-type", "dict")
                grp.attrs.setdefault("encoding-version", "0.1.0")
                for lv in cal.levels:
                    name = interval_layer(level_name(lv))
                    ds = grp.create_dataset(
                        name, shape=dset.shape, dtype="float32", chunks=dset.chunks
                    )
                    ds.attrs["encoding-type"] = "array"
                    ds.attrs["encoding-version"] = "0.2.0"
                    layer_sets[lv] = ds
            for a in range(0, len(names), step):
                chunk_names = names[a : a + step]
                block = project_genes(result, genes=chunk_names, method=method).X
                dset[:, a : a + block.shape[1]] = block
                if cal is not None:
                    for lv, hw in intervals(result, cal, chunk_names).items():
                        layer_sets[lv][:, a : a + hw.shape[1]] = hw
    return adata
