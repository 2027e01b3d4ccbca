"""Imputation ideas measured on the accuracy protocol (issue: "imputation you can trust").

For each pair (same normalisation and 10 seeded folds over genes as ``accuracy.py``), every idea
imputes the held-out genes from the training genes only, and its median / mean held-out Pearson
is reported next to the default (the neighbourhood ensemble) — including the ideas that did not
help. Also: the default's prediction-interval coverage and width and the reliability ranking
(Spearman between predicted and actual held-out Pearson), from ``cross_validate``.

Usage::

    python benchmarks/ideas.py --datasets merfish_hypothalamus starmap_mpfc osmfish_sscortex \
        --epochs 300 --out docs/bench
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from napari_spatial_impute.core.project import project_genes

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

import napari_spatial_impute as nsi
from napari_spatial_impute.core.metrics import gene_folds, pearson_per_gene
from napari_spatial_impute.core.neighbours import MEMBERS, Member, neighbour_weights


def _members_only(*members: Member):
    return lambda Rt, St: neighbour_weights(Rt, St, members=members)


def idea_table(name: str, epochs: int, seed: int = 0) -> pd.DataFrame:
    pair = common.load_pair(name)
    ref, spa = pair.reference, pair.spatial
    shared = common.shared_genes(ref, spa)
    rg = [r for r, _ in shared]
    sg = [s for _, s in shared]
    R = common.dense(ref, rg)
    Sx = common.dense(spa, sg)
    xy = np.asarray(spa.obsm["spatial"])[:, :2]
    folds = gene_folds(list(range(len(rg))), 10, seed)
    weight_ideas = {
        "kNN k=10, values as given (floor)": _members_only(Member("raw", 10)),
        "kNN k=50, genes z-scored per data set": _members_only(Member("z", 50)),
        "kNN k=100, z-scored": _members_only(Member("z", 100)),
        "kNN k=100, z-scored, softmax weights (T=0.1)": _members_only(Member("z", 100, 0.1)),
        "kNN k=50, 20 joint PCs": _members_only(Member("pca", 50)),
        "neighbourhood ensemble (default: the five above averaged)": _members_only(*MEMBERS),
    }
    scores: dict[str, np.ndarray] = {k: np.full(len(rg), np.nan) for k in weight_ideas}
    tangram_ideas = {
        "Tangram map M^T S (--epochs)": {},
        "Tangram + cell-wise term lambda_g2=1": {"lambda_g2": 1.0},
        "Tangram, 100 epochs": {"epochs": 100},
        "Tangram, no density prior": {"density": "none"},
    }
    for k in tangram_ideas:
        scores[k] = np.full(len(rg), np.nan)
    extra = [
        "Tangram column-normalised (M^T S / column mass)",
        "ensemble + Tangram (z-averaged)",
        "ensemble, spatially smoothed over 5 nearest cells",
    ]
    for k in extra:
        scores[k] = np.full(len(rg), np.nan)
    from scipy.spatial import cKDTree

    _, nb = cKDTree(xy).query(xy, k=5)

    def z(X: np.ndarray) -> np.ndarray:
        sd = X.std(0)
        sd[sd == 0] = 1
        return (X - X.mean(0)) / sd

    t0 = time.time()
    for f in folds:
        tr = [i for i in range(len(rg)) if i not in set(f)]
        ens = None
        for label, fn in weight_ideas.items():
            W = fn(R[:, tr], Sx[:, tr])
            pred = np.asarray(W @ R[:, f])
            scores[label][f] = pearson_per_gene(pred, Sx[:, f])
            if label.startswith("neighbourhood"):
                ens = pred
        for label, kw in tangram_ideas.items():
            kw = {"epochs": epochs, **kw}
            res = nsi.map_cells_to_space(
                ref, spa, genes=[rg[i] for i in tr], seed=seed, method="tangram", **kw
            )
            pred = np.asarray(project_genes(res, [rg[i] for i in f], method="probabilistic").X)
            scores[label][f] = pearson_per_gene(pred, Sx[:, f])
            if label.startswith("Tangram map"):
                col = np.asarray(res.probabilities.sum(0)).ravel()
                scores[extra[0]][f] = pearson_per_gene(pred / col[:, None], Sx[:, f])
                scores[extra[1]][f] = pearson_per_gene(z(ens) + z(pred), Sx[:, f])
        scores[extra[2]][f] = pearson_per_gene(ens[nb].mean(1), Sx[:, f])
    default = scores["neighbourhood ensemble (default: the five above averaged)"]
    rows = []
    for label, v in scores.items():
        rows.append(
            {
                "dataset": name,
                "idea": label,
                "median_r": float(np.nanmedian(v)),
                "mean_r": float(np.nanmean(v)),
                "gain_vs_default_median": float(np.nanmedian(v) - np.nanmedian(default)),
            }
        )
    common.log(f"{name}: ideas done in {time.time() - t0:.0f} s")
    return pd.DataFrame(rows)


def uncertainty_row(name: str, epochs: int, seed: int = 0) -> dict:
    pair = common.load_pair(name)
    df = nsi.cross_validate(pair.reference, pair.spatial, folds=10, seed=seed)
    s = nsi.summarize_cv(df)
    return {"dataset": name, **{k: float(v) for k, v in s.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--datasets",
        nargs="+",
        default=["merfish_hypothalamus", "starmap_mpfc", "osmfish_sscortex"],
    )
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "bench"))
    p.add_argument("--skip-ideas", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**common.machine_info(), "args": vars(args)}
    if not args.skip_ideas:
        tables = [idea_table(d, args.epochs, args.seed) for d in args.datasets]
        ideas = pd.concat(tables, ignore_index=True)
        ideas.to_csv(out / "ideas.csv", index=False)
        print(ideas.to_string(index=False))
    unc = pd.DataFrame([uncertainty_row(d, args.epochs, args.seed) for d in args.datasets])
    unc.to_csv(out / "uncertainty.csv", index=False)
    print(unc.to_string(index=False))
    (out / "ideas_meta.json").write_text(json.dumps(meta, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
