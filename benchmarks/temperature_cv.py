"""A temperature on the ensemble map chosen by inner cross-validation (issue 15, an idea that failed).

For each outer fold of the accuracy protocol (10 seeded folds over genes, seed 0), the ensemble
map's weights are raised to ``1/T`` and renormalised per spatial cell, for ``T`` in
{0.5, 0.7, 1, 1.4, 2}; ``T`` is chosen by the median Pearson of an inner 5-fold over the training
genes only (the folds the calibration uses), then applied to the outer map. Prints, per pair,
the held-out median Pearson of ``T = 1`` (the ensemble), of the inner-CV choice, the choices, and
of every fixed ``T``.

Usage::

    python benchmarks/temperature_cv.py merfish_hypothalamus,starmap_mpfc,osmfish_sscortex
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from napari_spatial_impute.core.metrics import gene_folds, pearson_per_gene
from napari_spatial_impute.core.neighbours import neighbour_weights

TEMPERATURES = (0.5, 0.7, 1.0, 1.4, 2.0)


def powered(W: sp.csr_matrix, T: float) -> sp.csr_matrix:
    """``W^(1/T)`` renormalised per spatial cell (row)."""
    W = W.copy()
    W.data = W.data ** (1.0 / T)
    s = np.asarray(W.sum(1)).ravel()
    return sp.csr_matrix(sp.diags(1 / s) @ W)


def run(name: str) -> str:
    pair = common.load_pair(name)
    rg, sg, R, Sx = common.shared_matrices(pair)
    chosen = np.full(len(rg), np.nan)
    fixed = {T: np.full(len(rg), np.nan) for T in TEMPERATURES}
    picks = []
    for f in gene_folds(list(range(len(rg))), 10, 0):
        held = set(f)
        tr = [i for i in range(len(rg)) if i not in held]
        pos = {g: k for k, g in enumerate(tr)}
        inner_pred = {T: np.zeros((Sx.shape[0], len(tr))) for T in TEMPERATURES}
        for h in gene_folds(tr, 5, 0):
            hs = set(h)
            t2 = [i for i in tr if i not in hs]
            Wi = neighbour_weights(R[:, t2], Sx[:, t2])
            for T in TEMPERATURES:
                inner_pred[T][:, [pos[g] for g in h]] = powered(Wi, T) @ R[:, h]
        inner = {T: np.nanmedian(pearson_per_gene(inner_pred[T], Sx[:, tr])) for T in TEMPERATURES}
        best = max(TEMPERATURES, key=lambda T: inner[T])
        picks.append(best)
        W = neighbour_weights(R[:, tr], Sx[:, tr])
        for T in TEMPERATURES:
            fixed[T][f] = pearson_per_gene(powered(W, T) @ R[:, f], Sx[:, f])
        chosen[f] = fixed[best][f]
    each = " ".join(f"T{T}:{np.nanmedian(v):.4f}" for T, v in fixed.items())
    return (
        f"{name} ensemble {np.nanmedian(fixed[1.0]):.4f} inner-CV T {np.nanmedian(chosen):.4f} "
        f"picks {picks} {each}"
    )


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    args = sys.argv[1:] if argv is None else argv
    for name in (args[0] if args else ",".join(common.DATASETS)).split(","):
        print(run(name), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
