"""Per-gene scores and gene folds, one definition each (training scores, validation, calibration)."""

from __future__ import annotations

from collections.abc import Sequence

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


def gene_folds(genes: Sequence[str], folds: int, seed: int = 0) -> list[list[str]]:
    """Split genes into ``folds`` groups after a seeded permutation (numpy ``default_rng``)."""
    genes = list(genes)
    if folds < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {folds}.")
    if folds > len(genes):
        raise InputError(
            f"{folds} folds need at least {folds} shared genes; there are {len(genes)}. Use fewer folds."
        )
    order = np.random.default_rng(seed).permutation(len(genes))
    return [[genes[i] for i in part] for part in np.array_split(order, folds)]
