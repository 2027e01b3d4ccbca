"""How sure each imputed value and each imputed gene is.

Prediction intervals (in the spirit of TISSUE, Sun et al. 2023, Nature Methods): within the
training genes only, an inner k-fold over genes imputes each training gene without it, exactly
as a new gene would be imputed. For every cell and gene the *spread* of the neighbourhood
ensemble is known, ``σ = sqrt(W S² - (W S)²)`` (the weighted standard deviation of the matched
reference cells), for measured and unmeasured genes alike. The conformity score of a
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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_spatial_impute._errors import InputError
from napari_spatial_impute.core.engine.mapper import CancelFlag
from napari_spatial_impute.core.neighbours import neighbour_weights, similarity_values
from napari_spatial_impute.core.preprocess import dense_columns
from napari_spatial_impute.io._sparse import is_sparse

if TYPE_CHECKING:
    from napari_spatial_impute.core.result import MappingResult
    from napari_spatial_impute.io._sparse import SparseMatrix

#: Nominal coverages of the intervals stored by default (90 % and 67 %).
LEVELS: tuple[float, ...] = (0.9, 0.67)
#: Calibration uses at most this many spatial cells (a seeded random subset above it).
MAX_CALIBRATION_CELLS = 20_000
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


def _neighbours(result: MappingResult) -> sp.csr_matrix:
    """The mapping's neighbourhood ensemble, which intervals and reliabilities are built on."""
    if result.neighbours is None:
        raise InputError(
            "a Tangram map has no prediction intervals; map with method='ensemble' (the default)."
        )
    return result.neighbours


def _spread(W: sp.csr_matrix, X: np.ndarray | SparseMatrix) -> tuple[np.ndarray, np.ndarray]:
    mean = W @ X
    sq = W @ (X.multiply(X) if is_sparse(X) else X * X)
    mean = mean.toarray() if is_sparse(mean) else np.asarray(mean)
    sq = sq.toarray() if is_sparse(sq) else np.asarray(sq)
    return mean, np.sqrt(np.clip(sq - mean * mean, 0, None))


def _cell_groups(
    result: MappingResult, n_groups: int = 4, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    key = result.cluster_key
    if key:
        from napari_spatial_impute.core.project import project_cell_annotations

        probs = project_cell_annotations(result, key)
        labels = probs.to_numpy().argmax(1)
        cats = list(probs.columns)
        counts = np.bincount(labels, minlength=len(cats))
        # tiny groups borrow the pooled quantile: merge groups under 30 cells into "other"
        small = counts < 30
        if small.any():
            names = [c for c, s_ in zip(cats, small, strict=True) if not s_] + ["other"]
            remap = np.cumsum(~small) - 1
            remap[small] = len(names) - 1
            return remap[labels], names
        return labels, cats
    from scipy.cluster.vq import kmeans2

    xy = np.asarray(result.spatial.obsm["spatial"], dtype=np.float64)[:, :2]
    k = max(1, min(n_groups, xy.shape[0] // 50))
    if k == 1:
        return np.zeros(xy.shape[0], dtype=np.int64), ["all"]
    _, labels = kmeans2(xy, k, seed=seed, minit="++")
    return labels.astype(np.int64), [f"block {i}" for i in range(k)]


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
    W: sp.csr_matrix, ref_values: np.ndarray | SparseMatrix, offset: float
) -> np.ndarray:
    """Per-gene features for the reliability model, one row per gene column of ``ref_values``."""
    X = ref_values
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
    pred, spread = _spread(W, X)
    return np.column_stack(
        [
            np.log1p(mean),
            det,
            np.log1p(np.clip(var, 0, None)),
            np.log1p(spread.mean(axis=0) / (offset + 1e-12)),
            np.log1p(pred.std(axis=0)),
        ]
    )


def calibrate(
    result: MappingResult,
    levels: Sequence[float] = LEVELS,
    inner_folds: int = 5,
    seed: int = 0,
    cancel: CancelFlag = None,
) -> Calibration:
    """Calibrate intervals and the reliability model on the mapping's training genes.

    Parameters
    ----------
    result
        A mapping with its neighbourhood ensemble.
    levels
        Nominal coverages.
    inner_folds
        Folds over training genes.
    seed
        Seed of the gene folds (and of the cell subset above :data:`MAX_CALIBRATION_CELLS`).
    cancel
        Stops the calibration with :class:`~napari_spatial_impute.MappingCancelled` when set.
    """
    from napari_spatial_impute.core.metrics import gene_folds, pearson_per_gene

    train = list(result.genes.training_reference)
    sp_name = dict(zip(result.genes.shared_reference, result.genes.shared_spatial, strict=True))
    raw = (
        result.params.get("transform", "none") == "none"
        and result.params.get("reference_values") == "raw counts"
    )
    # the map's neighbour search (older results recorded none: "auto")
    search = str(result.params.get("search", "auto"))
    S_all = dense_columns(result.reference_values, train)
    G_all = dense_columns(result.spatial_values, [sp_name[g] for g in train])
    groups, names = _cell_groups(result, seed=seed)
    if G_all.shape[0] > MAX_CALIBRATION_CELLS:
        keep = np.sort(
            np.random.default_rng(seed).choice(G_all.shape[0], MAX_CALIBRATION_CELLS, replace=False)
        )
        G_all, cal_groups = G_all[keep], groups[keep]
    else:
        cal_groups = groups
    folds = gene_folds(train, min(inner_folds, len(train)), seed) if len(train) >= 2 else [train]
    pos = {g: i for i, g in enumerate(train)}
    preds = np.zeros_like(G_all)
    spreads = np.zeros_like(G_all)
    for held in folds:
        h = [pos[g] for g in held]
        t = [i for i in range(len(train)) if i not in set(h)] or h
        W = neighbour_weights(
            similarity_values(S_all[:, t], raw),
            similarity_values(G_all[:, t], raw),
            cancel=cancel,
            search=search,
            seed=seed,
        )
        p, s_ = _spread(W, S_all[:, h])
        preds[:, h], spreads[:, h] = p, s_
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
    feats = gene_features(_neighbours(result), S_all, offset)
    ok = np.isfinite(inner_r)
    A = np.column_stack([np.ones(ok.sum()), feats[ok]])
    coef, *_ = (
        np.linalg.lstsq(A, inner_r[ok], rcond=None)
        if ok.sum() > A.shape[1]
        else (np.r_[np.nanmean(inner_r) if ok.any() else 0.0, np.zeros(feats.shape[1])],)
    )
    return Calibration(
        groups, names, q, tuple(levels), offset, np.asarray(coef), train, inner_r, scale
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
    _, spread = _spread(_neighbours(result), result.reference_values.X[:, idx])
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
    from napari_spatial_impute.core.project import resolve_reference_genes

    names = resolve_reference_genes(result, genes)
    idx = result.reference.var_names.get_indexer(names)
    feats = gene_features(
        _neighbours(result), result.reference_values.X[:, idx], calibration.offset
    )
    pred = calibration.coef[0] + feats @ calibration.coef[1:]
    return pd.Series(np.clip(pred, -1, 1), index=names, name="predicted_pearson")
