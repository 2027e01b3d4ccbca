"""Peer methods re-implemented for the accuracy benchmark (own code, numpy + scikit-learn).

Only :func:`spage` so far. It is written from the description in the paper and a reading of the
authors' code (GitHub ``tabdelaal/SpaGE``: ``SpaGE/main.py``, ``SpaGE/principal_vectors.py``,
``benchmark/*/SpaGE/Integration.py``), not copied from it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["spage", "spage_default_n_pv"]


def spage_default_n_pv(n_genes: int) -> int:
    """The SpaGE authors' number of principal vectors, as a rule of the training-gene count.

    Their benchmarks (``benchmark/*/SpaGE/Integration.py``) use ``n_factors = n_pv = 50`` for
    MERFISH hypothalamus (155 shared genes) and STARmap visual cortex (about 1,000 genes) and
    ``30`` for the 33-gene osmFISH panel. Rule here: 50 when there are more than 50 training
    genes, otherwise ``min(30, n_genes)``. (Li et al. 2022 used ``int(n_train / 2)`` instead.)
    """
    if n_genes > 50:
        return 50
    return max(1, min(30, n_genes))


def _zscore(X: np.ndarray) -> np.ndarray:
    """Per-gene z-score over cells (population std, as ``scipy.stats.zscore``); constant genes -> 0."""
    X = np.asarray(X, dtype=np.float64)
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    Z = X - mu
    ok = sd > 0
    Z[:, ok] /= sd[ok]
    Z[:, ~ok] = 0.0
    return Z


def _pca_loadings(Z: np.ndarray, n: int) -> np.ndarray:
    """Top ``n`` principal axes (rows, orthonormal) of the column-centred matrix ``Z``."""
    Zc = Z - Z.mean(axis=0)
    _, _, vt = np.linalg.svd(Zc, full_matrices=False)
    return vt[:n]


def spage(
    reference_train: np.ndarray,
    spatial_train: np.ndarray,
    reference_predict: np.ndarray,
    n_pv: int | None = None,
    k: int = 50,
    *,
    threshold: float = 0.3,
    return_neighbors: bool = False,
):
    """SpaGE imputation (Abdelaal et al. 2020, Nucleic Acids Res. 48:e107).

    PRECISE domain adaptation (Mourragui et al. 2019) followed by a weighted kNN average:

    1. each data set is z-scored per gene over its own cells on the shared (training) genes;
    2. PCA of each z-scored set independently, ``n_pv`` components each (``n_factors = n_pv``
       as in SpaGE's ``main.py``); ``Ps``, ``Pt`` are the orthonormal loading matrices
       (``n_pv x genes``) of the reference (source) and spatial (target) set;
    3. principal vectors from the SVD ``Ps Ptᵀ = U Σ Vᵀ``: source vectors ``Uᵀ Ps``; their
       cosine similarities with the target vectors ``Vᵀ Pt`` are the singular values ``Σ``;
       only the vectors with similarity ``> threshold`` (0.3) are kept;
    4. both z-scored sets are projected on the kept *source* principal vectors;
    5. for each spatial cell the ``k`` (50) nearest reference cells by cosine distance ``d`` in
       that space; neighbours with ``d >= 1`` (negative or zero cosine similarity) are dropped;
       with ``m`` neighbours left the weights are ``w_i = (1 - d_i / Σ_j d_j) / (m - 1)`` (they
       sum to 1), and the prediction is ``Σ_i w_i * reference_predict[neighbour_i]``, i.e. in the
       units of ``reference_predict`` (here the log-normalised reference, as SpaGE averages its
       normalised, unscaled scRNA-seq values).

    Parameters
    ----------
    reference_train, spatial_train
        Cells x training genes (same genes, same order), already normalised (SpaGE's inputs are
        log-normalised; this benchmark passes ``log1p`` of median-total-scaled counts).
    reference_predict
        Reference cells x genes to predict.
    n_pv
        Principal vectors (and PCA components) per set. Default: :func:`spage_default_n_pv`
        (the authors' values: 50, or 30 for panels of at most 50 genes, capped at the number of
        training genes). Always capped at the number of genes and of cells of either set.
    k
        Neighbours (SpaGE: 50), capped at the number of reference cells.
    threshold
        Cosine-similarity cut for keeping principal vectors (SpaGE: 0.3).
    return_neighbors
        Also return the neighbour indices (``n_sp x k``) and weights (0 for dropped neighbours).

    Returns
    -------
    numpy.ndarray
        Spatial cells x predicted genes (float64); with ``return_neighbors`` a tuple
        ``(pred, indices, weights)``.

    Deviations from the authors' code (all in corner cases SpaGE does not handle): genes that
    are constant in a set get z-score 0 instead of NaN; if no principal vector passes the
    threshold the most similar one is kept; a cell with a single neighbour at ``d < 1`` copies
    it (SpaGE divides by ``m - 1 = 0``); a cell whose neighbours all have ``d = 0`` averages them
    equally; a cell with no neighbour at ``d < 1`` gets 0 (as the authors' benchmark scripts,
    which replace NaN by 0). PCA is computed by an exact SVD (SpaGE: scikit-learn ``PCA``) and the
    extra ``scipy.linalg.orth`` step is omitted: it only rotates a basis that is already
    orthonormal, which does not change the principal vectors. Checked against the authors'
    ``SpaGE()`` on simulated data: identical to 1e-15 when their ``PCA`` is forced to
    ``svd_solver="full"``; with scikit-learn's default solver (randomized above 500 cells when
    ``n_pv`` is under 80 % of the genes) their result is an approximation of this one.
    """
    from sklearn.neighbors import NearestNeighbors

    A = np.asarray(reference_train, dtype=np.float64)
    B = np.asarray(spatial_train, dtype=np.float64)
    Y = np.asarray(reference_predict, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"training matrices must share genes: {A.shape} vs {B.shape}")
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.shape[0] != A.shape[0]:
        raise ValueError(f"reference_predict has {Y.shape[0]} cells, reference {A.shape[0]}")
    n_ref, g = A.shape
    n_sp = B.shape[0]

    if n_pv is None:
        n_pv = spage_default_n_pv(g)
    n_pv = int(max(1, min(n_pv, g, n_ref, n_sp)))

    Za = _zscore(A)
    Zb = _zscore(B)
    Ps = _pca_loadings(Za, n_pv)
    Pt = _pca_loadings(Zb, n_pv)
    u, sigma, _ = np.linalg.svd(Ps @ Pt.T)
    S = u.T @ Ps  # source principal vectors (rows), unit norm
    S /= np.linalg.norm(S, axis=1, keepdims=True)
    keep = max(1, int(np.sum(sigma > threshold)))
    S = S[:keep]

    Xa = Za @ S.T
    Xb = Zb @ S.T
    kk = int(min(k, n_ref))
    nn = NearestNeighbors(n_neighbors=kk, metric="cosine", algorithm="brute").fit(Xa)
    d, idx = nn.kneighbors(Xb)

    use = d < 1.0
    m = use.sum(axis=1)
    dsum = np.where(use, d, 0.0).sum(axis=1)
    w = np.zeros_like(d)
    many = (m >= 2) & (dsum > 0)
    w[many] = (1.0 - d[many] / dsum[many, None]) / (m[many, None] - 1)
    tie = (m >= 2) & (dsum <= 0)
    w[tie] = 1.0 / m[tie, None]
    one = m == 1
    w[one] = 1.0
    w[~use] = 0.0

    pred = np.zeros((n_sp, Y.shape[1]))
    for j in range(kk):
        pred += w[:, j : j + 1] * Y[idx[:, j]]
    if return_neighbors:
        return pred, idx, w
    return pred
