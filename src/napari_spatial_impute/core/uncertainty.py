"""How sure each imputed value and each imputed gene is.

Prediction intervals (in the spirit of TISSUE, Sun et al. 2023, Nature Methods): within the
training genes only, maps built without some training genes impute them, exactly as a new gene
would be imputed (the ensemble: an inner 5-fold over all training genes; a Tangram map: the
quarter its automatic choice held out, :mod:`napari_spatial_impute.core.maps.choose`). For every
cell and gene the *spread* of the map is known, ``σ = r sqrt(w S² - (w S)²)`` (the weighted
standard deviation of the matched reference cells, ``w`` a spatial cell's weights scaled to sum
to 1 and ``r`` their sum), for measured and unmeasured genes alike. The conformity score of a
cross-validated value is ``|measured / k - predicted| / (σ + c)`` (``k``: the platform factor
between measured and imputed units, see :func:`platform_scale`; ``c``: the median spread, so
that genes with no spread still get an interval), and its quantiles are taken separately per group of
cells (Mondrian conformal prediction; groups are the most likely cluster, or spatial k-means
blocks without clusters). A new gene's interval at a cell is ``predicted ± q(group) (σ + c)``.

Per-gene reliability: the cross-validated Pearson of each training gene is regressed on gene
properties that exist for every reference gene (mean, detection rate and variance in the
reference, mean spread and dispersion of the prediction); the fit predicts a held-out Pearson
for every imputed gene.

Held-out genes of an outer cross-validation never reach the calibration: it sees only the genes
the mapping was trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputError
from napari_spatial_impute.core.preprocess import dense_columns
from napari_spatial_impute.io._sparse import is_sparse, sparse_product

if TYPE_CHECKING:
    from napari_spatial_impute.core.maps.base import Operator
    from napari_spatial_impute.core.maps.choose import InnerFold
    from napari_spatial_impute.core.result import MappingResult
    from napari_spatial_impute.io._sparse import SparseMatrix

#: Nominal coverages of the intervals stored by default (90 % and 67 %).
LEVELS: tuple[float, ...] = (0.9, 0.67)
#: The reliability model needs cross-validated Pearsons over at least this many spatial cells
#: (over two cells every Pearson is +-1 whatever the prediction); with fewer, every gene's
#: predicted Pearson is 0 (no evidence either way).
MIN_RELIABILITY_CELLS = 3


@dataclass
class Calibration:
    """Conformal quantiles per cell group and the per-gene reliability model.

    Attributes
    ----------
    groups
        Group of each spatial cell (int codes).
    group_names
        Name of each group.
    quantiles
        Array (n_groups, n_levels): the conformity-score quantile of each group and level.
    levels
        Nominal coverages.
    offset
        ``c`` added to the spread.
    coef
        Linear model of held-out Pearson on the features of :func:`gene_features` (intercept
        first): log mean, detection rate, log variance, log spread, log prediction sd.
    calibration_genes
        Training genes used (reference names).
    inner_pearson
        Cross-validated Pearson of each calibration gene.
    scale
        Platform factor ``c``: measured spatial values are about ``c`` times the imputed
        (reference-unit) values; intervals cover ``measured / c``, i.e. the measured value in
        the imputed value's units.
    pooled
        The quantile of each level over all calibration cells (a group with fewer than ten
        cells, or cells of a group the calibration did not see, use it).
    centres
        The spatial blocks' centres (k-means, one row per group) when the groups are blocks
        (no cluster key); ``None`` for cluster groups.
    """

    groups: np.ndarray
    group_names: list[str]
    quantiles: np.ndarray
    levels: tuple[float, ...]
    offset: float
    coef: np.ndarray
    calibration_genes: list[str]
    inner_pearson: np.ndarray
    scale: float = 1.0
    pooled: np.ndarray | None = None
    centres: np.ndarray | None = None


def map_operator(result: MappingResult) -> Operator:
    """The result's map as spatial cells x reference cells: imputed values are ``A @ values``.

    The ensemble map's ``W``, or a Tangram map's ``Mᵀ``. Intervals and reliability need a map of
    reference cells (cells mode).
    """
    if result.mode != "cells":
        raise InputError(
            f"prediction intervals need a map of reference cells; this is a {result.mode}-mode "
            "map: map in cells mode (the default) for intervals."
        )
    if result.neighbours is not None:
        return result.neighbours
    return result.probabilities.T


def _spread(A: Operator, X: np.ndarray | SparseMatrix) -> tuple[np.ndarray, np.ndarray]:
    """``(A X, spread)``: the imputed values and the spread of the units behind each of them.

    With weights ``w = A / r`` (``r``: each spatial cell's total weight, 1 for the ensemble) the
    spread is ``r · sqrt(w X² - (w X)²)``, the weighted standard deviation of the matched
    reference cells in the imputed values' units.
    """
    mean = map_product(A, X)
    sq = map_product(A, X.multiply(X) if is_sparse(X) else X * X)
    r = np.asarray(A.sum(axis=1), dtype=np.float64).reshape(-1, 1)
    return mean, np.sqrt(np.clip(r * sq - mean * mean, 0, None))


def map_product(A: Operator, X: np.ndarray | SparseMatrix) -> np.ndarray:
    """``A @ X`` as a dense array, for dense or sparse ``A`` and ``X``."""
    if not is_sparse(A) and is_sparse(X):
        out = (X.T @ A.T).T
    elif is_sparse(A):
        return sparse_product(A, X)
    else:
        out = A @ X
    return out.toarray() if is_sparse(out) else np.asarray(out)


def _cell_groups(
    result: MappingResult, n_groups: int = 4, seed: int = 0
) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """Each spatial cell's group, the groups' names and (spatial blocks) their centres."""
    key = result.cluster_key
    if key:
        labels, cats = _cluster_labels(result, key)
        counts = np.bincount(labels, minlength=len(cats))
        # tiny groups borrow the pooled quantile: merge groups under 30 cells into "other"
        small = counts < 30
        if small.any():
            names = [c for c, s_ in zip(cats, small, strict=True) if not s_] + [OTHER]
            remap = np.cumsum(~small) - 1
            remap[small] = len(names) - 1
            return remap[labels], names, None
        return labels, cats, None
    from scipy.cluster.vq import kmeans2

    xy = _coordinates(result)
    k = max(1, min(n_groups, xy.shape[0] // 50))
    if k == 1:
        return np.zeros(xy.shape[0], dtype=np.int64), ["all"], None
    centres, labels = kmeans2(xy, k, seed=seed, minit="++")
    return labels.astype(np.int64), [f"block {i}" for i in range(k)], np.asarray(centres)


#: The group of the clusters too small for a quantile of their own.
OTHER = "other"


def _cluster_labels(result: MappingResult, key: str) -> tuple[np.ndarray, list[str]]:
    from napari_spatial_impute.core.project import project_cell_annotations

    probs = project_cell_annotations(result, key)
    return probs.to_numpy().argmax(1), [str(c) for c in probs.columns]


def _coordinates(result: MappingResult) -> np.ndarray:
    return np.asarray(result.spatial.obsm["spatial"], dtype=np.float64)[:, :2]


def for_cells(calibration: Calibration, result: MappingResult) -> Calibration:
    """``calibration`` (made on other cells, e.g. a sample drawn across an atlas' sections)
    applied to the cells of ``result``: each cell joins the calibration's group it would have
    joined there (its most likely cluster, ``"other"`` for the clusters merged there, or the
    nearest spatial block's centre); the cells of a cluster the calibration never saw get the
    pooled quantile (a group ``"other"`` added when the calibration has none)."""
    cal = calibration
    n = result.spatial.n_obs
    quantiles = np.asarray(cal.quantiles)
    names = list(cal.group_names)
    pooled = cal.pooled if cal.pooled is not None else quantiles.max(axis=0)
    if cal.centres is not None:
        xy = _coordinates(result)
        d = ((xy[:, None, :] - np.asarray(cal.centres)[None, :, :]) ** 2).sum(axis=2)
        groups = d.argmin(axis=1).astype(np.int64)
    elif result.cluster_key and names != ["all"]:
        labels, cats = _cluster_labels(result, result.cluster_key)
        where = {c: i for i, c in enumerate(names)}
        if OTHER not in where and not all(c in where for c in cats):
            names.append(OTHER)
            quantiles = np.vstack([quantiles, np.asarray(pooled)[None, :]])
            where[OTHER] = len(names) - 1
        lookup = np.asarray([where.get(c, where.get(OTHER, 0)) for c in cats], dtype=np.int64)
        groups = lookup[labels] if n else np.zeros(0, dtype=np.int64)
    else:
        groups = np.zeros(n, dtype=np.int64)
    return dataclasses.replace(cal, groups=groups, group_names=names, quantiles=quantiles)


def _conformal_quantile(scores: np.ndarray, level: float) -> float:
    n = scores.size
    if n == 0:
        return float("inf")
    rank = min(n, int(np.ceil((n + 1) * level)))
    return float(np.partition(scores, rank - 1)[rank - 1])


def platform_scale(measured: np.ndarray, predicted: np.ndarray) -> float:
    """Median over genes of mean measured / mean predicted (1 when it cannot be estimated).

    Imputed values are in the reference's units; a targeted assay measures each gene on its own
    scale (raw MERFISH counts are about 8 times the scRNA-seq counts of the bundled pair).
    """
    pm = predicted.mean(axis=0)
    mm = measured.mean(axis=0)
    ok = (pm > 0) & (mm > 0)
    if not ok.any():
        return 1.0
    return float(np.median(mm[ok] / pm[ok]))


def gene_features(
    W: Operator,
    ref_values: np.ndarray | SparseMatrix,
    offset: float,
    spread: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Per-gene features for the reliability model, one row per gene column of ``ref_values``
    (``spread``: :func:`_spread`'s ``(W X, spread)`` when computed already)."""
    X = ref_values
    pred, spread_ = _spread(W, X) if spread is None else spread
    return np.column_stack(
        [
            reference_features(X),
            np.log1p(spread_.mean(axis=0) / (offset + 1e-12)),
            np.log1p(pred.std(axis=0)),
        ]
    )


def reference_features(X: np.ndarray | SparseMatrix) -> np.ndarray:
    """The reference's part of :func:`gene_features` (genes x 3): log mean, detection rate and
    log variance of each gene column of ``X``."""
    if is_sparse(X):
        # scipy-stubs type mean(axis=...) on sparray and spmatrix, not on their common base
        mean = np.asarray(X.mean(axis=0)).ravel()  # type: ignore[call-overload]
        det = np.asarray(X.astype(bool).mean(axis=0)).ravel()  # type: ignore[call-overload]
        sq = X.multiply(X).mean(axis=0)  # type: ignore[call-overload]
        var = np.asarray(sq).ravel() - mean**2
    else:
        mean = np.asarray(X.mean(axis=0)).ravel()
        det = np.asarray(X != 0).mean(axis=0)
        var = X.var(axis=0)
    return np.column_stack([np.log1p(mean), det, np.log1p(np.clip(var, 0, None))])


def calibrate(
    result: MappingResult,
    folds: Sequence[InnerFold],
    cells: np.ndarray | None = None,
    levels: Sequence[float] = LEVELS,
    seed: int = 0,
) -> Calibration:
    """Calibrate intervals and the reliability model on the map's own inner held-out genes.

    Parameters
    ----------
    result
        A map of reference cells (cells mode), the ensemble or a Tangram map.
    folds
        Maps of the same kind built without some training genes
        (:func:`~napari_spatial_impute.core.maps.choose.build_inner`): every held-out gene is
        imputed by a map that never saw it, exactly as a new gene is imputed. The ensemble
        holds out every training gene once (five folds); a Tangram map holds out the quarter
        its automatic choice held out.
    cells
        The spatial cells the folds were built on (``None``: all).
    levels
        Nominal coverages.
    seed
        Seed of the spatial k-means groups when there is no cluster key.
    """
    from napari_spatial_impute.core.metrics import pearson_per_gene

    A = map_operator(result)
    train = list(result.genes.training_reference)
    sp_name = dict(zip(result.genes.shared_reference, result.genes.shared_spatial, strict=True))
    held = sorted({i for fold in folds for i in fold.held})
    if not held:
        raise InputError("calibration needs held-out training genes; none were given.")
    S_all = dense_columns(result.reference_values, train)
    # the calibration cells' rows only (not every spatial cell's, then indexed)
    measured = result.spatial_values if cells is None else result.spatial_values[cells]
    G_all = dense_columns(measured, [sp_name[train[i]] for i in held])
    groups, names, centres = _cell_groups(result, seed=seed)
    cal_groups = groups if cells is None else groups[cells]
    col = {g: j for j, g in enumerate(held)}
    preds = np.zeros_like(G_all)
    spreads = np.zeros_like(G_all)
    for fold in folds:
        same = (
            fold.cells is None
            if cells is None
            else fold.cells is not None and np.array_equal(fold.cells, cells)
        )
        if not same:
            raise ValueError("every calibration fold must be built on the same spatial cells")
        j = [col[i] for i in fold.held]
        p, s_ = _spread(fold.built.operator(), S_all[:, fold.held])
        preds[:, j], spreads[:, j] = p, s_
    offset = float(np.median(spreads)) or float(np.mean(spreads)) or 1e-6
    scale = platform_scale(G_all, preds)
    scores = np.abs(G_all / scale - preds) / (spreads + offset)
    q = np.zeros((len(names), len(levels)))
    pooled = [_conformal_quantile(scores.ravel(), lv) for lv in levels]
    for gi in range(len(names)):
        mask = cal_groups == gi
        for li, lv in enumerate(levels):
            q[gi, li] = (
                _conformal_quantile(scores[mask].ravel(), lv) if mask.sum() >= 10 else pooled[li]
            )
    inner_r = pearson_per_gene(preds, G_all)
    if G_all.shape[0] < MIN_RELIABILITY_CELLS:
        inner_r = np.full_like(inner_r, np.nan)
    feats = chunked_features(A, S_all[:, held], offset)
    ok = np.isfinite(inner_r)
    X = np.column_stack([np.ones(ok.sum()), feats[ok]])
    coef, *_ = (
        np.linalg.lstsq(X, inner_r[ok], rcond=None)
        if ok.sum() > X.shape[1]
        else (np.r_[np.nanmean(inner_r) if ok.any() else 0.0, np.zeros(feats.shape[1])],)
    )
    return Calibration(
        groups,
        names,
        q,
        tuple(levels),
        offset,
        np.asarray(coef),
        [train[i] for i in held],
        inner_r,
        scale,
        np.asarray(pooled, dtype=np.float64),
        centres,
    )


def intervals(
    result: MappingResult, calibration: Calibration, genes: Sequence[str] | None = None
) -> dict[float, np.ndarray]:
    """Half-width of each level's interval for the imputed genes (spatial cells x genes).

    The interval is ``imputed ± half_width`` around the neighbourhood projection.
    """
    from napari_spatial_impute.core.project import resolve_reference_genes

    names = resolve_reference_genes(result, genes)
    idx = result.reference.var_names.get_indexer(names)
    _, spread = _spread(map_operator(result), result.reference_values.X[:, idx])
    scale = spread + calibration.offset
    out = {}
    for li, lv in enumerate(calibration.levels):
        out[lv] = (scale * calibration.quantiles[calibration.groups, li][:, None]).astype(
            np.float32
        )
    return out


def reliability(
    result: MappingResult, calibration: Calibration, genes: Sequence[str] | None = None
) -> pd.Series:
    """Predicted held-out Pearson of each imputed gene (clipped to [-1, 1])."""
    return gene_summaries(result, calibration, genes)[0]


#: Bytes of the float64 arrays of one gene chunk in :func:`gene_summaries` and
#: :func:`chunked_features` (a few such arrays are held at once).
SUMMARY_BYTES = 64 << 20


def summary_step(n_cells: int) -> int:
    """Genes per chunk of :func:`gene_summaries` / :func:`chunked_features`."""
    return max(1, SUMMARY_BYTES // (16 * max(n_cells, 1)))


def chunked_features(W: Operator, X: np.ndarray, offset: float) -> np.ndarray:
    """:func:`gene_features` of the columns of dense ``X`` over all spatial cells, in gene chunks of
    :func:`summary_step` (each gene's features are its own: the same numbers as at once)."""
    step = summary_step(W.shape[0])
    parts = [gene_features(W, X[:, a : a + step], offset) for a in range(0, X.shape[1], step)]
    return np.concatenate(parts) if parts else gene_features(W, X, offset)


def gene_summaries(
    result: MappingResult, calibration: Calibration, genes: Sequence[str] | None = None
) -> tuple[pd.Series, dict[float, float]]:
    """:func:`reliability` of each gene and the mean interval width of each level (over all
    cells and genes, ``2 x`` the half-width of :func:`intervals`), in one pass over gene chunks
    whose arrays stay near :data:`SUMMARY_BYTES` (each gene's numbers are those of all genes at
    once: every step is per gene)."""
    from napari_spatial_impute.core.project import resolve_reference_genes

    names = resolve_reference_genes(result, genes)
    idx = result.reference.var_names.get_indexer(names)
    A = map_operator(result)
    n_cells = A.shape[0]
    step = summary_step(n_cells)
    feats, per_cell = [], np.zeros(n_cells, dtype=np.float64)
    for a in range(0, len(idx), step):
        X = result.reference_values.X[:, idx[a : a + step]]
        pred, spread = _spread(A, X)
        feats.append(gene_features(A, X, calibration.offset, (pred, spread)))
        per_cell += (spread + calibration.offset).sum(axis=1)
    F = np.concatenate(feats) if feats else np.zeros((0, len(calibration.coef) - 1))
    pred_r = calibration.coef[0] + F @ calibration.coef[1:]
    total = max(n_cells * len(idx), 1)
    widths = {
        lv: float(2.0 * calibration.quantiles[calibration.groups, li] @ per_cell / total)
        for li, lv in enumerate(calibration.levels)
    }
    series = pd.Series(np.clip(pred_r, -1, 1), index=names, name="predicted_pearson")
    return series, widths
