"""Trained maps on the neighbourhood ensemble's support, measured on the accuracy protocol.

Question: can a *trained* map, whose own projection is the imputation, beat the neighbourhood
ensemble on held-out genes? The default imputation is the ensemble's weight matrix
``W = neighbour_weights(S_train, G_train)`` (spatial cells x reference cells, CSR, rows summing
to 1) applied to the reference values: ``W @ S``. The Tangram objective (maximise the mean over
genes of the cosine similarity between predicted and measured gene vectors across spatial cells)
can train a map; here the map is kept on W's support and started at W, so epoch 0 of every
trained idea *is* the ensemble and any change is due to training alone.

Protocol: as ``accuracy.py`` — each pair normalised once (``common.load_pair``), genes matched
(``common.shared_genes``), the same 10 seeded gene folds (``core.metrics.gene_folds(…, 10, 0)``);
for each fold W and every map are built from the training genes only and scored on the held-out
genes (``pearson_per_gene``, per gene across spatial cells). Reported per dataset x idea x
scored epoch: median and mean held-out Pearson over all genes, the training score (mean gene-wise
cosine on the training genes, averaged over folds) and the wall time of the idea for all 10
folds (one CPU thread; training up to the last scored epoch, scoring excluded).

Ideas
-----
``ensemble W``
    The default: ``W @ S``. Time: building W (all five neighbour searches) for 10 folds. Every
    other idea reuses that W; their times exclude it.
``tangram plain``
    A softmax per *spatial* cell over W's nonzeros (the reference cells W already uses), logits
    initialised at ``log W``, trained with Adam (lr 0.1) on the negative Tangram gene-wise
    cosine; the imputation is the trained map applied to the reference values.
``tangram + cell-wise (lambda_g2=1)``
    As plain, plus the cell-wise cosine term (each spatial cell's predicted vs measured profile
    over the training genes), weight 1.
``tangram + KL(M||W) prior, weight 1`` / ``weight 10``
    As plain, plus ``weight * mean over spatial cells of KL(M_j || W_j)``, which pulls each
    row back towards the ensemble's weights.
``tangram plain, lr 0.01``
    As plain with a ten times smaller Adam step (slower drift from W).
``temperature T=0.5`` / ``T=2`` (no training)
    ``W^(1/T)`` renormalised per row: T<1 sharpens (weight on the closest neighbours), T>1
    flattens (towards the mean of the support).
``lean engine on W's pairs (Mᵀ S)``
    The package's own lean engine (``core.engine.mapper.TangramMapper`` with ``pairs``) on
    exactly W's nonzeros (``rows`` = reference index, ``cols`` = spatial index, sorted by
    spatial then reference cell), logits initialised at ``log W``, no pair refresh, package
    defaults otherwise (uniform density prior with ``lambda_d = 1``, lr 0.1). As in tangram-sc
    each *reference* cell's row is a softmax over spatial cells (so epoch 0 is W normalised per
    reference cell, not W itself), and the imputation is the projection ``Mᵀ S``
    (``P.T @ reference values``), not renormalised per spatial cell.

Usage::

    python benchmarks/map_ideas.py --datasets merfish_hypothalamus starmap_mpfc osmfish_sscortex \
        --epochs 0 10 50 200 --out docs/bench

Writes ``map_ideas.csv`` and ``map_ideas_meta.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from napari_spatial_impute.core.engine.mapper import TangramMapper
from napari_spatial_impute.core.engine.objective import Weights
from napari_spatial_impute.core.metrics import gene_folds, pearson_per_gene
from napari_spatial_impute.core.neighbours import neighbour_weights

ENSEMBLE = "ensemble W"
#: Trained ideas on a per-spatial-cell softmax over W's support: keyword arguments of ``train``.
TRAINED: dict[str, dict[str, float]] = {
    "tangram plain": {},
    "tangram + cell-wise (lambda_g2=1)": {"lam_g2": 1.0},
    "tangram + KL(M||W) prior, weight 1": {"lam_kl": 1.0},
    "tangram + KL(M||W) prior, weight 10": {"lam_kl": 10.0},
    "tangram plain, lr 0.01": {"lr": 0.01},
}
TEMPERATURES = {"temperature T=0.5 (W^2)": 0.5, "temperature T=2 (W^0.5)": 2.0}
LEAN = "lean engine on W's pairs (M^T S)"

#: A trained map at each scored epoch: spatial x reference CSR (imputation = map @ reference).
Snapshots = dict[int, sp.csr_matrix]


def _row_index(W: sp.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(W.shape[0]), np.diff(W.indptr))


def train(
    W: sp.csr_matrix,
    R: np.ndarray,
    G: np.ndarray,
    epochs: list[int],
    lam_g2: float = 0.0,
    lam_kl: float = 0.0,
    lr: float = 0.1,
) -> Snapshots:
    """Per-spatial-cell softmax on W's support, from ``log W``, Adam on the Tangram loss.

    Returns the map (spatial x reference CSR) at each epoch of ``epochs`` (before that epoch's
    update; epoch 0 is W).
    """
    s = W.shape[0]
    crow = torch.as_tensor(W.indptr.astype(np.int64))
    cols = torch.as_tensor(W.indices.astype(np.int64))
    rows = torch.as_tensor(_row_index(W))
    logw0 = torch.log(torch.as_tensor(W.data.astype(np.float32)).clamp_min(1e-12))
    L = logw0.clone().requires_grad_()
    Rt, Gt = torch.as_tensor(R), torch.as_tensor(G)
    RtT = Rt.t().contiguous()
    opt = torch.optim.Adam([L], lr=lr)

    def probs(logits: torch.Tensor) -> torch.Tensor:
        mx = torch.full((s,), -torch.inf).scatter_reduce(
            0, rows, logits, reduce="amax", include_self=True
        )
        e = torch.exp(logits - mx[rows])
        return e / torch.zeros(s).index_add(0, rows, e)[rows]

    def csr(vals: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(crow, cols, vals, size=(s, R.shape[0]))

    out: Snapshots = {}
    last = max(epochs)
    for ep in range(last + 1):
        with torch.no_grad():
            P = probs(L)
        if ep in epochs:
            out[ep] = sp.csr_matrix((P.numpy().copy(), W.indices, W.indptr), shape=W.shape)
        if ep == last:
            break
        with torch.no_grad():
            pred = csr(P) @ Rt
        pred.requires_grad_()
        loss = -torch.nn.functional.cosine_similarity(pred, Gt, dim=0).mean()
        if lam_g2:
            loss = loss - lam_g2 * torch.nn.functional.cosine_similarity(pred, Gt, dim=1).mean()
        loss.backward()
        with torch.no_grad():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dP = torch.sparse.sampled_addmm(csr(torch.zeros_like(P)), pred.grad, RtT, beta=0.0)
            dP = dP.values().clone()
            if lam_kl:  # d/dP of lam_kl / s * sum P log(P / W)
                dP += lam_kl / s * (torch.log(P.clamp_min(1e-30)) + 1 - logw0)
            inner = torch.zeros(s).index_add(0, rows, P * dP)
            L.grad = P * (dP - inner[rows])  # chain rule through the row softmax
        opt.step()
    return out


def temperature(W: sp.csr_matrix, T: float) -> sp.csr_matrix:
    """``W^(1/T)`` renormalised per row."""
    V = W.copy()
    V.data = V.data.astype(np.float64) ** (1.0 / T)
    rs = np.asarray(V.sum(1)).ravel()
    V.data /= rs[_row_index(V)]
    return V


def lean_on_support(W: sp.csr_matrix, R: np.ndarray, G: np.ndarray, epochs: list[int]) -> Snapshots:
    """The package's lean engine on W's pairs from ``log W``; snapshots of ``Mᵀ`` (spatial x ref)."""
    s, n = W.shape
    rows = torch.as_tensor(W.indices.astype(np.int64))  # reference index
    cols = torch.as_tensor(_row_index(W).astype(np.int64))  # spatial index, sorted
    mapper = TangramMapper(
        R,
        G,
        Weights(lambda_d=1.0),
        d=np.full(s, 1.0 / s, dtype=np.float32),
        learning_rate=0.1,
        num_threads=1,
        pairs=(rows, cols),
        refresh_every=0,
    )
    with torch.no_grad():  # BlockAdam updates these logits in place
        mapper.M.copy_(torch.log(torch.as_tensor(W.data.astype(np.float32)).clamp_min(1e-12)))
    out: Snapshots = {}
    last = max(epochs)
    for ep in range(last + 1):
        if ep in epochs:
            out[ep] = sp.csr_matrix(mapper.probabilities().T)
        if ep == last:
            break
        mapper.step()
    return out


def _cosine_genes(pred: np.ndarray, meas: np.ndarray) -> float:
    num = (pred * meas).sum(0)
    den = np.linalg.norm(pred, axis=0) * np.linalg.norm(meas, axis=0)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def idea_rows(name: str, epochs: list[int], seed: int = 0) -> list[dict]:
    pair = common.load_pair(name)
    rg, sg, R, Sx = common.shared_matrices(pair)
    folds = gene_folds(list(range(len(rg))), 10, seed)
    common.log(f"{name}: {R.shape[0]} reference x {Sx.shape[0]} spatial cells, {len(rg)} genes")

    makers: dict[str, Callable[[sp.csr_matrix, np.ndarray, np.ndarray], Snapshots]] = {
        ENSEMBLE: lambda W, R_, G_: {0: W},
    }
    for label, kw in TRAINED.items():
        makers[label] = lambda W, R_, G_, kw=kw: train(W, R_, G_, epochs, **kw)
    for label, T in TEMPERATURES.items():
        makers[label] = lambda W, R_, G_, T=T: {0: temperature(W, T)}
    makers[LEAN] = lambda W, R_, G_: lean_on_support(W, R_, G_, epochs)

    held: dict[str, dict[int, np.ndarray]] = {k: {} for k in makers}
    train_score: dict[str, dict[int, list[float]]] = {k: {} for k in makers}
    seconds = dict.fromkeys(makers, 0.0)
    for fi, f in enumerate(folds):
        fs = set(f)
        tr = [i for i in range(len(rg)) if i not in fs]
        t0 = time.perf_counter()
        W = neighbour_weights(R[:, tr], Sx[:, tr]).tocsr()
        W.sort_indices()
        seconds[ENSEMBLE] += time.perf_counter() - t0
        for label, make in makers.items():
            t0 = time.perf_counter()
            snaps = make(W, R[:, tr], Sx[:, tr])
            if label != ENSEMBLE:
                seconds[label] += time.perf_counter() - t0
            for ep, M in snaps.items():
                v = held[label].setdefault(ep, np.full(len(rg), np.nan))
                v[f] = pearson_per_gene(np.asarray(M @ R[:, f]), Sx[:, f])
                train_score[label].setdefault(ep, []).append(
                    _cosine_genes(np.asarray(M @ R[:, tr]), Sx[:, tr])
                )
        common.log(f"{name}: fold {fi + 1}/10 done")
    out = []
    for label in makers:
        for ep, v in sorted(held[label].items()):
            out.append(
                {
                    "dataset": name,
                    "idea": label,
                    "epoch": ep,
                    "median_r": float(np.nanmedian(v)),
                    "mean_r": float(np.nanmean(v)),
                    "train_score": float(np.mean(train_score[label][ep])),
                    "n_genes": int(np.isfinite(v).sum()),
                    "seconds_10_folds": round(seconds[label], 2),
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(common.DATASETS))
    p.add_argument("--epochs", nargs="+", type=int, default=[0, 10, 50, 200])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(common.BENCH_OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    # warm-up (torch's first sparse kernels), so that the first timed idea does not pay for it
    tiny = sp.csr_matrix(np.full((2, 2), 0.5, dtype=np.float32))
    ones = np.ones((2, 3), dtype=np.float32)
    train(tiny, ones, ones, [0, 2])
    lean_on_support(tiny, ones, ones, [0, 2])
    epochs = sorted({0, *args.epochs})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**common.machine_info(), "args": vars(args), "epochs_scored": epochs}
    t0 = time.time()
    rows = [r for d in args.datasets for r in idea_rows(d, epochs, args.seed)]
    meta["total_seconds"] = round(time.time() - t0, 1)
    df = pd.DataFrame(rows)
    df.to_csv(out / "map_ideas.csv", index=False)
    (out / "map_ideas_meta.json").write_text(json.dumps(meta, indent=1, default=str))
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
