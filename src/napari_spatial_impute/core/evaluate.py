"""Evaluation: leave-genes-out cross-validation and per-cell-type validation."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from napari_spatial_impute._errors import InputError, InputWarning
from napari_spatial_impute.core.engine.mapper import EpochInfo
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.core.genes import match_genes, plan_genes
from napari_spatial_impute.core.mapping import map_cells_to_space
from napari_spatial_impute.core.metrics import (
    cosine_per_gene,
    gene_folds,
    pearson_per_gene,
    size_baseline_pearson,
    spearman_per_gene,
)
from napari_spatial_impute.core.preprocess import apply_transform, check_transform, dense_columns
from napari_spatial_impute.core.project import project_genes, resolve_method
from napari_spatial_impute.core.result import MappingResult
from napari_spatial_impute.core.uncertainty import intervals, reliability
from napari_spatial_impute.io.files import validate_adata
from napari_spatial_impute.io.schema import level_name


def cross_validate(
    reference: ad.AnnData,
    spatial: ad.AnnData,
    *,
    folds: int = 10,
    seed: int = 0,
    genes: Sequence[str] | None = None,
    progress: Callable[[int, int, EpochInfo | None], None] | None = None,
    projection: str = "auto",
    fold_order: str = "random",
    transform: str = "auto",
    baselines: bool = True,
    **map_kwargs: Any,
) -> pd.DataFrame:
    """Leave-genes-out cross-validation of the imputation.

    The shared genes (or ``genes``) are split into ``folds`` groups; for each group a mapping is
    trained on the other shared genes only and the group's genes are imputed and compared with
    their measured values. Held-out genes never reach training.

    Parameters
    ----------
    reference, spatial
        The data sets.
    folds
        Number of gene groups.
    seed
        Seed of the gene permutation (and of each mapping unless ``map_kwargs`` sets one).
    fold_order
        ``"random"`` (a seeded permutation of the genes) or ``"sorted"`` (genes sorted by name,
        consecutive blocks, as in Li et al. 2022); see
        :func:`~napari_spatial_impute.core.metrics.gene_folds`.
    genes
        Genes to cross-validate (reference or spatial names, any case); default all shared.
    progress
        Called as ``progress(fold, n_folds, epoch_info)`` during training.
    projection
        Projection of the held-out genes (``method`` of
        :func:`~napari_spatial_impute.project_genes`; default: the map's own).
    transform
        Value transform of the maps and of the scored values (``transform`` of
        :func:`~napari_spatial_impute.map_cells_to_space`). The default ``"auto"`` normalises
        each data set that holds raw counts to its median total and takes ``log1p``, and keeps
        any other as given (:func:`~napari_spatial_impute.core.preprocess.describe_transform`
        says which): on raw counts, Pearson rewards predicting cell size.
    baselines
        Also score two trivial predictors on the same folds (columns ``size_pearson`` and
        ``knn_pearson``): the **size baseline**, each spatial cell's total over the training
        genes (values as given, before the transform), and the **10-NN peer**, the mean of the
        10 nearest reference cells by cosine over the training genes (transformed values,
        :func:`knn_predict`). A method whose median is not above the size baseline's measures
        cell size more than expression.
    **map_kwargs
        Passed to :func:`~napari_spatial_impute.map_cells_to_space` (``method``, mode, epochs,
        ...); ``genes`` there is not allowed. ``uncertainty`` is off here unless given: the
        held-out genes' imputation does not use the calibration, which costs five inner maps
        per fold (about four times the time of the default cross-validation, measured on the
        MERFISH pair); ``uncertainty=True`` calibrates each fold's map and scores its intervals
        and reliability on the held-out genes (the columns below). The held-out accuracy is the
        same either way.

    Returns
    -------
    One row per held-out gene: ``gene``, ``fold``, ``pearson``, ``cosine``, ``spearman``,
    ``n_training_genes``, ``sparsity_sp``, with ``baselines`` ``size_pearson`` and
    ``knn_pearson``, and, with the neighbourhood projection and
    ``uncertainty=True``, ``coverage_90``/``coverage_67`` (fraction of cells whose measured value
    lies in the interval), ``width_90``/``width_67`` (mean interval width) and
    ``predicted_pearson``.
    """
    if "genes" in map_kwargs:
        raise InputError("cross_validate chooses training genes itself; do not pass genes= to map.")
    validate_adata(reference, "reference")
    validate_adata(spatial, "spatial", require_spatial=True)
    pairs = match_genes(reference.var_names, spatial.var_names)
    if not pairs:
        plan_genes(reference, spatial)  # raises the no-shared-genes message
    ref_to_sp = dict(pairs)
    if genes is None:
        cv_genes = [r for r, _ in pairs]
    else:
        lower = {r.lower(): r for r, _ in pairs}
        cv_genes = [lower[g.lower()] for g in genes if g.lower() in lower]
        if not cv_genes:
            raise InputError("none of the genes to cross-validate is shared by both data sets.")
    groups = gene_folds(cv_genes, folds, seed, order=fold_order)
    checked = check_transform(transform)
    map_kwargs["transform"] = checked
    sp_vals = apply_transform(spatial, checked, "spatial")
    ref_vals = apply_transform(reference, checked, "reference") if baselines else None
    map_kwargs.setdefault("seed", seed)
    map_kwargs.setdefault("uncertainty", False)
    rows = []
    for f, held in enumerate(groups):
        held_set = set(held)
        train = [r for r, _ in pairs if r not in held_set]

        def cb(info: EpochInfo, _f: int = f) -> None:
            if progress is not None:
                progress(_f, len(groups), info)

        with warnings.catch_warnings():
            # each fold's automatic choice would warn of weak imputation once per fold; the
            # held-out scores and the size baseline beside them say it once for the whole run
            warnings.filterwarnings("ignore", message="imputation is weak", category=InputWarning)
            result = map_cells_to_space(reference, spatial, genes=train, callback=cb, **map_kwargs)
        assert not (set(result.genes.training_reference) & held_set), (
            "held-out gene used in training"
        )
        pred = project_genes(result, held, method=projection).X
        measured = dense_columns(sp_vals, [ref_to_sp[g] for g in held])
        extra: dict[str, np.ndarray] = {}
        cal = result.calibration
        if cal is not None and resolve_method(result, projection) == resolve_method(result, "auto"):
            for lv, hw in intervals(result, cal, held).items():
                inside = np.abs(measured / cal.scale - pred) <= hw
                extra[f"coverage_{level_name(lv)}"] = inside.mean(axis=0)
                extra[f"width_{level_name(lv)}"] = 2 * hw.mean(axis=0)
            extra["predicted_pearson"] = reliability(result, cal, held).to_numpy()
        pear = pearson_per_gene(pred, measured)
        cos = cosine_per_gene(pred, measured)
        spear = spearman_per_gene(pred, measured)
        sparsity = 1.0 - np.count_nonzero(measured, axis=0) / measured.shape[0]
        base: dict[str, np.ndarray] = {}
        if ref_vals is not None:  # the trivial predictors, on the map's training genes
            train_ref = list(result.genes.training_reference)
            train_sp = list(result.genes.training_spatial)
            given = spatial.X[:, spatial.var_names.get_indexer(train_sp)]
            base["size_pearson"] = size_baseline_pearson(given, measured)
            knn = knn_predict(
                dense_columns(ref_vals, train_ref),
                dense_columns(sp_vals, train_sp),
                dense_columns(ref_vals, held),
            )
            base["knn_pearson"] = pearson_per_gene(knn, measured)
        for i, g in enumerate(held):
            rows.append(
                {
                    "gene": g,
                    "fold": f,
                    "pearson": pear[i],
                    "cosine": cos[i],
                    "spearman": spear[i],
                    "n_training_genes": len(result.genes.training_reference),
                    "sparsity_sp": sparsity[i],
                    **{k: float(v[i]) for k, v in base.items()},
                    **{k: float(v[i]) for k, v in extra.items()},
                }
            )
        if progress is not None:
            progress(f + 1, len(groups), None)
    return pd.DataFrame(rows)


#: Reference cells averaged by the kNN peer of :func:`cross_validate`.
KNN_BASELINE_K = 10


def knn_predict(
    reference_train: np.ndarray,
    spatial_train: np.ndarray,
    reference_held: np.ndarray,
    k: int = KNN_BASELINE_K,
    chunk: int | None = None,
) -> np.ndarray:
    """The kNN peer: each spatial cell's mean of its ``k`` nearest reference cells.

    Nearest by cosine similarity of the rows of ``spatial_train`` and ``reference_train`` (the
    training genes; a row of zeros is similar to nothing, 0); the prediction is the mean of those
    reference cells' rows of ``reference_held``. Ties go to the lower reference index. Spatial
    cells are taken ``chunk`` at a time (default: about 16 million values per block).

    Returns
    -------
    ``(n_spatial, n_held)`` float64.
    """
    S = np.asarray(reference_train, dtype=np.float32)
    G = np.asarray(spatial_train, dtype=np.float32)
    H = np.asarray(reference_held, dtype=np.float64)
    n_ref = S.shape[0]
    k = max(1, min(k, n_ref))

    def unit(X: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(X, axis=1, keepdims=True)
        out: np.ndarray = np.divide(X, norm, out=np.zeros_like(X), where=norm > 0)
        return out

    S, G = unit(S), unit(G)
    step = chunk or max(1, (1 << 24) // max(n_ref, k * H.shape[1], 1))
    out = np.empty((G.shape[0], H.shape[1]), dtype=np.float64)
    for start in range(0, G.shape[0], step):
        sims = G[start : start + step] @ S.T
        if k < n_ref:
            # the k + 1 largest: a row whose k-th and (k + 1)-th tie is sorted stably, so that
            # ties go to the lower index
            top = torch.topk(torch.from_numpy(sims), k + 1, dim=1)
            idx = top.indices[:, :k].numpy()
            tied = (top.values[:, k - 1] == top.values[:, k]).numpy()
            if tied.any():
                idx[tied] = np.argsort(-sims[tied], axis=1, kind="stable")[:, :k]
        else:
            idx = np.broadcast_to(np.arange(n_ref), (sims.shape[0], n_ref))
        out[start : start + step] = H[idx].mean(axis=1)
    return out


def summarize_cv(df: pd.DataFrame) -> dict[str, float]:
    """Median and mean Pearson of a cross-validation table, and how many genes were NaN.

    With the baselines' columns, also ``median_size_pearson`` and ``median_knn_pearson``.
    """
    p = df["pearson"].to_numpy(dtype=np.float64)
    out: dict[str, float] = {
        "median_pearson": float(np.nanmedian(p)) if np.isfinite(p).any() else float("nan"),
        "mean_pearson": float(np.nanmean(p)) if np.isfinite(p).any() else float("nan"),
        "n_genes": int(len(p)),
        "n_nan": int(np.isnan(p).sum()),
    }
    for col in ("size_pearson", "knn_pearson"):
        if col in df.columns:
            v = df[col].to_numpy(dtype=np.float64)
            out[f"median_{col}"] = float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")
    for col in df.columns:
        if col.startswith(("coverage_", "width_")):
            out[f"mean_{col}"] = float(np.nanmean(df[col].to_numpy(dtype=np.float64)))
    if "predicted_pearson" in df.columns:
        pred = df["predicted_pearson"].to_numpy(dtype=np.float64)
        ok = np.isfinite(p) & np.isfinite(pred)
        out["reliability_spearman"] = (
            float(spearman_per_gene(pred[ok, None], p[ok, None])[0])
            if ok.sum() > 2
            else float("nan")
        )
    return out


def validate_cell_types(
    result: MappingResult | ad.AnnData,
    spatial: ad.AnnData | None = None,
    markers: Sequence[str] | None = None,
    cell_type_key: str | None = None,
    n_markers: int = 1,
) -> pd.DataFrame:
    """The seed's per-cell-type validation: marker expression level per cell type.

    For each marker gene, the mean measured and the mean imputed value per cell type are each
    min-max normalised to [0, 1] across cell types, so the two profiles can be compared.

    Parameters
    ----------
    result
        A :class:`MappingResult`, or a result AnnData (then ``spatial`` is not needed: the
        measured values are in ``obsm["measured"]``).
    spatial
        Unused for a :class:`MappingResult` (its spatial data is used).
    markers
        Marker genes (shared genes). Default: the top ``n_markers`` reference markers per
        cluster among the shared genes.
    cell_type_key
        Spatial obs column with cell types; default the projected most-likely cluster.
    n_markers
        Markers per cluster when ``markers`` is ``None``.

    Returns
    -------
    Long DataFrame: ``gene``, ``cell_type``, ``measured``, ``predicted``, ``n_cells``.
    """
    from napari_spatial_impute.core.genes import marker_genes
    from napari_spatial_impute.io.schema import UNS_KEY

    if isinstance(result, MappingResult):
        wanted = None
        if markers is not None:
            ref_lower = {g.lower() for g in result.genes.shared_reference}
            wanted = [m for m in markers if m.lower() in ref_lower]
            if not wanted:
                raise InputError(
                    "none of the marker genes was measured in space; give shared genes."
                )
        res_ad = result_to_anndata(result, genes=wanted)
        reference = result.reference
        ckey = result.cluster_key
    else:
        res_ad = result
        reference = None
        ckey = res_ad.uns.get(UNS_KEY, {}).get("cluster_key")
    if cell_type_key is None:
        if not ckey:
            raise InputError("no cell types: give cell_type_key or map with a cluster key.")
        cell_type_key = f"{ckey}_predicted"
    if cell_type_key not in res_ad.obs.columns:
        raise InputError(
            f"cell type column {cell_type_key!r} is not in the spatial obs; columns there are: "
            f"{', '.join(map(str, res_ad.obs.columns))}."
        )
    shared = res_ad.var_names[res_ad.var["is_shared"].astype(bool)].tolist()
    if markers is None:
        if reference is None or not ckey:
            markers = shared[: min(len(shared), 10)]
        else:
            markers = marker_genes(reference, ckey, n_markers, genes=shared)
    lower = {g.lower(): g for g in shared}
    chosen = [lower[m.lower()] for m in markers if m.lower() in lower]
    if not chosen:
        raise InputError("none of the marker genes was measured in space; give shared genes.")
    meas_names = res_ad.var.loc[chosen, "measured_name"].tolist()
    measured = res_ad.obsm["measured"][meas_names].to_numpy(dtype=np.float64)
    predicted = np.asarray(res_ad[:, chosen].X, dtype=np.float64)
    types = res_ad.obs[cell_type_key].astype(str)
    frame_m = pd.DataFrame(measured, columns=chosen).groupby(types.to_numpy()).mean()
    frame_p = pd.DataFrame(predicted, columns=chosen).groupby(types.to_numpy()).mean()
    counts = types.value_counts()

    def minmax(df: pd.DataFrame) -> pd.DataFrame:
        lo, hi = df.min(0), df.max(0)
        return (df - lo) / (hi - lo).replace(0, np.nan)

    nm, npred = minmax(frame_m), minmax(frame_p)
    rows = []
    for g in chosen:
        for ct in nm.index:
            rows.append(
                {
                    "gene": g,
                    "cell_type": ct,
                    "measured": float(nm.loc[ct, g]),
                    "predicted": float(npred.loc[ct, g]),
                    "n_cells": int(counts.get(ct, 0)),
                }
            )
    return pd.DataFrame(rows)
