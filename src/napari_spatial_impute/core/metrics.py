"""Per-gene scores and gene folds, one definition each (training scores, validation, calibration)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_spatial_impute._errors import InputError


def pearson_per_gene(pred: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``pred`` with the same column of ``measured``.

    Constant columns give NaN.
    """
    p = np.asarray(pred, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    p = p - p.mean(0)
    m = m - m.mean(0)
    num = (p * m).sum(0)
    den = np.sqrt((p * p).sum(0) * (m * m).sum(0))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 1e-12)
    return out


def size_baseline_pearson(training: Any, measured: np.ndarray) -> np.ndarray:
    """The size baseline: Pearson of each column of ``measured`` with each cell's total over
    ``training`` (cells x training genes, dense or sparse, the values as given).

    A predictor that knows only how much a cell expresses; an imputation that does not beat it
    measures cell size more than the map.
    """
    totals = np.asarray(training.sum(axis=1, dtype=np.float64)).reshape(-1, 1)
    m = np.asarray(measured)
    return pearson_per_gene(np.repeat(totals, m.shape[1], axis=1), m)


def spearman_per_gene(pred: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column pair: the Pearson of their average ranks (NaN for a
    constant column). Avoids importing ``scipy.stats`` (0.3 s) where only this is needed."""
    import pandas as pd

    return pearson_per_gene(
        pd.DataFrame(np.asarray(pred)).rank().to_numpy(),
        pd.DataFrame(np.asarray(measured)).rank().to_numpy(),
    )


def cosine_per_gene(pred: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Cosine similarity of each column of ``pred`` with the same column of ``measured``."""
    pred = np.asarray(pred, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    num = (pred * measured).sum(0)
    den = np.linalg.norm(pred, axis=0) * np.linalg.norm(measured, axis=0)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def gene_sparsity(X: np.ndarray) -> np.ndarray:
    """Fraction of zero entries per column (tangram-sc's ``sparsity``)."""
    nonzero = np.asarray(np.count_nonzero(X, axis=0), dtype=np.float64)
    zero_fraction: np.ndarray = 1.0 - nonzero / max(X.shape[0], 1)
    return zero_fraction


#: How :func:`gene_folds` orders genes before splitting them.
FOLD_ORDERS: tuple[str, ...] = ("random", "sorted")


def gene_folds(
    genes: Sequence[str], folds: int, seed: int = 0, order: str = "random"
) -> list[list[str]]:
    """Split genes into ``folds`` groups of consecutive genes (sizes differ by at most one).

    ``order="random"``: after a seeded permutation (numpy ``default_rng(seed)``).
    ``order="sorted"``: genes sorted by name (case-insensitive), no shuffling: the blocks of
    scikit-learn's ``KFold(n_splits=folds)`` without shuffling, which is how Li et al. 2022
    (Nature Methods 19:662) made their gene folds; ``seed`` is not used.
    """
    genes = list(genes)
    if order not in FOLD_ORDERS:
        raise InputError(f"fold order {order!r} is not known; use one of {', '.join(FOLD_ORDERS)}.")
    if folds < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {folds}.")
    if folds > len(genes):
        raise InputError(
            f"{folds} folds need at least {folds} shared genes; there are {len(genes)}. Use fewer folds."
        )
    if order == "sorted":
        idx = np.array(sorted(range(len(genes)), key=lambda i: (genes[i].lower(), genes[i])))
    else:
        idx = np.random.default_rng(seed).permutation(len(genes))
    return [[genes[i] for i in part] for part in np.array_split(idx, folds)]
