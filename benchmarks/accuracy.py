"""Imputation accuracy: leave-genes-out cross-validation, this project vs tangram-sc, SpaGE, kNN.

Protocol (fixed; see benchmarks/README.md):

* each data set is normalised once, before any split: total counts over its own genes scaled
  to the median total, then ``log1p``;
* genes are matched case-insensitively; the shared genes are split into ``--folds`` groups by
  :func:`napari_spatial_impute.core.metrics.gene_folds` (``--fold-order random``: a seeded
  permutation, ``--seed``; ``sorted``: genes sorted by name in consecutive blocks, the
  ``KFold`` without shuffling of Li et al. 2022);
* for each fold every method trains on the other shared genes only (held-out genes never reach
  training) and predicts the held-out genes at every spatial cell;
* score per held-out gene: Pearson r between predicted and measured log-normalised values over
  all spatial cells; a gene a method cannot predict (e.g. dropped by tangram-sc) or with a
  constant prediction/measurement is NaN and counted;
* for cell-split pairs the argmax of the projected cluster probabilities is compared with the
  known labels.

Methods, on the same folds in one run: ``ours`` (``map_cells_to_space`` with default settings:
the ensemble map, nothing trained, intervals calibrated; ``transform="none"`` because the data
are already normalised), ``ours[tangram]`` (the Tangram map, ``method="tangram"``, trained for
``--epochs``, imputing with its own ``Mᵀ S``), ``tangram`` (tangram-sc 1.0.4: ``pp_adatas`` +
``map_cells_to_space(mode="cells", num_epochs, density_prior="uniform")`` + ``project_genes``)
``spage`` (SpaGE, Abdelaal et al. 2020, re-implemented in ``benchmarks/peers.py``: PRECISE
principal vectors of the z-scored training genes, then the distance-weighted mean of the 50
nearest reference cells by cosine distance; annotation = majority vote of those 50 cells) and
``knn`` (mean of the k nearest reference cells by cosine distance on the training genes).

Usage::

    python benchmarks/accuracy.py --datasets merfish_hypothalamus starmap_mpfc osmfish_sscortex \
        --folds 10 --epochs 1000 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_spatial_impute.core.project import project_cell_annotations, project_genes

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import Pair, dense, log

# --------------------------------------------------------------------------------------------
# methods: each returns (pred [n_sp x held], mapping P [n_ref x n_sp] or None, ref-label votes)


def run_ours(
    pair: Pair, train: list[str], held: list[str], epochs: int, seed: int, map_method: str | None
):
    """This project. Returns ``(pred, P, None, extra)``.

    ``map_method=None``: ``map_cells_to_space`` with its defaults (the ensemble map; nothing
    trained, intervals calibrated, as a user's default run); ``"tangram"``: the Tangram map
    trained for ``epochs``. ``pred`` is the map's own projection (``project_genes(held)``) and
    the annotation scores are its ``cluster_probabilities()``.
    """
    from napari_spatial_impute import map_cells_to_space

    kw: dict[str, Any] = {}
    if map_method is not None:
        kw["method"] = map_method
        kw["epochs"] = epochs
    if pair.ref_label is not None:
        kw["cluster_key"] = pair.ref_label
    res = map_cells_to_space(
        pair.reference, pair.spatial, genes=train, seed=seed, transform="none", **kw
    )
    used = {g.lower() for g in res.genes.training_reference}
    assert not (used & {g.lower() for g in held}), "held-out gene reached training (ours)"
    pred = np.asarray(project_genes(res, held).X, dtype=np.float64)
    P = res.probabilities
    P = P.toarray() if hasattr(P, "toarray") else np.asarray(P)
    extra: dict[str, Any] = {"default_projection": OURS[map_method][1]}
    if pair.ref_label is not None:
        cp = project_cell_annotations(res)
        extra["annot_scores"] = (cp.to_numpy(), np.asarray(cp.columns.astype(str)))
    return pred, P, None, extra


#: ``ours`` variants: the map method passed, and the projection each reports
OURS: dict[str | None, tuple[str, str]] = {
    None: ("ours", "default: the ensemble map, W S (nothing trained)"),
    "tangram": ("ours[tangram]", "the Tangram map, Mᵀ S"),
}


def run_tangram(pair: Pair, train: list[str], held: list[str], epochs: int, seed: int):
    import anndata as ad
    import scipy.sparse as sp
    import tangram as tg

    common.quiet_tangram()
    ref = ad.AnnData(
        X=sp.csr_matrix(pair.reference.X, dtype=np.float32),
        obs=pd.DataFrame(index=pair.reference.obs_names.copy()),
        var=pd.DataFrame(index=pair.reference.var_names.copy()),
    )
    spa = ad.AnnData(
        X=sp.csr_matrix(pair.spatial.X, dtype=np.float32),
        obs=pd.DataFrame(index=pair.spatial.obs_names.copy()),
        var=pd.DataFrame(index=pair.spatial.var_names.copy()),
    )
    tg.pp_adatas(ref, spa, genes=list(train))
    held_l = {g.lower() for g in held}
    assert not (set(ref.uns["training_genes"]) & held_l), "held-out gene reached training (tangram)"
    adm = tg.map_cells_to_space(
        ref,
        spa,
        mode="cells",
        num_epochs=epochs,
        density_prior="uniform",
        device="cpu",
        # tangram-sc skips seeding when random_state is 0 (``if self.random_state:``)
        random_state=seed + 1,
        verbose=False,
    )
    ge = tg.project_genes(adm, ref)
    cols = ge.var_names
    pred = np.full((spa.n_obs, len(held)), np.nan)
    X = ge.X.toarray() if sp.issparse(ge.X) else np.asarray(ge.X)
    for i, g in enumerate(held):
        j = cols.get_indexer([g.lower()])[0]
        if j >= 0:
            pred[:, i] = X[:, j]
    return pred, np.asarray(adm.X, dtype=np.float32), None


def run_spage(
    pair: Pair,
    train_ref: list[str],
    train_sp: list[str],
    held: list[str],
    n_pv: int | str | None,
    k: int,
):
    """SpaGE (``peers.spage``) on the fold's training genes; returns ``(pred, None, idx, n_pv)``.

    ``n_pv``: ``None`` = the SpaGE authors' rule (``peers.spage_default_n_pv``), ``"half"`` =
    ``int(n_train / 2)`` as Li et al. 2022 (``BLAST_GenePrediction.ipynb``), or an integer.
    ``idx`` are the neighbour indices, used for the majority-vote annotation.
    """
    import peers

    A = dense(pair.reference, train_ref)
    B = dense(pair.spatial, train_sp)
    H = dense(pair.reference, held)
    if n_pv == "half":
        n_pv = max(1, len(train_ref) // 2)
    elif n_pv is None:
        n_pv = peers.spage_default_n_pv(len(train_ref))
    pred, idx, _ = peers.spage(A, B, H, n_pv=int(n_pv), k=k, return_neighbors=True)
    return pred, None, idx, int(n_pv)


def annotation_from_scores(pair: Pair, scores: np.ndarray, cats: np.ndarray) -> dict[str, float]:
    true = pair.spatial.obs[pair.sp_label].astype(str).to_numpy()
    pred = cats[np.argmax(scores, axis=1)]
    ok = pred == true
    known = np.isin(true, pair.reference.obs[pair.ref_label].astype(str).unique())
    return {
        "accuracy": float(ok.mean()),
        "accuracy_known_labels": float(ok[known].mean()) if known.any() else float("nan"),
        "frac_known_labels": float(known.mean()),
    }


def run_knn(pair: Pair, train_ref: list[str], train_sp: list[str], held: list[str], k: int):
    from sklearn.neighbors import NearestNeighbors

    A = dense(pair.reference, train_ref)
    B = dense(pair.spatial, train_sp)
    nn = NearestNeighbors(n_neighbors=min(k, A.shape[0]), metric="cosine", algorithm="brute")
    nn.fit(A)
    _, idx = nn.kneighbors(B)
    H = dense(pair.reference, held).astype(np.float64)
    pred = H[idx].mean(axis=1)
    return pred, None, idx


def annotation_accuracy(
    pair: Pair, P: np.ndarray | None, knn_idx: np.ndarray | None
) -> dict[str, float]:
    """Argmax of projected cluster probabilities vs known labels of the spatial cells."""
    ref_lab = pair.reference.obs[pair.ref_label].astype(str).to_numpy()
    true = pair.spatial.obs[pair.sp_label].astype(str).to_numpy()
    cats = np.unique(ref_lab)
    codes = np.searchsorted(cats, ref_lab)
    if P is not None:
        onehot = np.zeros((len(ref_lab), len(cats)), dtype=np.float32)
        onehot[np.arange(len(ref_lab)), codes] = 1.0
        scores = P.T @ onehot
    else:
        scores = np.zeros((knn_idx.shape[0], len(cats)))
        for j in range(knn_idx.shape[1]):
            scores[np.arange(knn_idx.shape[0]), codes[knn_idx[:, j]]] += 1
    pred = cats[np.argmax(scores, axis=1)]
    ok = pred == true
    known = np.isin(true, cats)
    return {
        "accuracy": float(ok.mean()),
        "accuracy_known_labels": float(ok[known].mean()) if known.any() else float("nan"),
        "frac_known_labels": float(known.mean()),
    }


# methods without training epochs, and the projection each reports in the summary
NO_EPOCHS = {"knn", "spage", "ours"}
PROJECTIONS = {
    "knn": "mean of k nearest",
    "spage": "SpaGE: distance-weighted mean of k nearest in PRECISE space",
}

# --------------------------------------------------------------------------------------------


def subsample(pair: Pair, max_cells: int | None, seed: int) -> Pair:
    if not max_cells:
        return pair
    rng = np.random.default_rng(seed)
    r = pair.reference
    s = pair.spatial
    if r.n_obs > max_cells:
        r = r[np.sort(rng.choice(r.n_obs, max_cells, replace=False))].copy()
    if s.n_obs > max_cells:
        s = s[np.sort(rng.choice(s.n_obs, max_cells, replace=False))].copy()
    return Pair(
        pair.name, r, s, pair.ref_label, pair.sp_label, pair.split + f" (subsampled to {max_cells})"
    )


def method_list(methods: list[str]) -> list[tuple[str, str | None]]:
    """``[(label, map method)]``; ``ours`` is the default run, ``ours[tangram]`` the Tangram map."""
    out: list[tuple[str, str | None]] = []
    labels = {label: m for m, (label, _) in OURS.items()}
    for m in methods:
        if m in labels:
            out.append((m, labels[m]))
        elif m == "tangram":
            if common.tangram_available():
                out.append(("tangram", None))
            else:
                log("tangram-sc is not installed: skipping it")
        else:
            out.append((m, None))
    return out


def evaluate_dataset(
    pair: Pair, args: argparse.Namespace
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    from napari_spatial_impute.core.metrics import gene_folds, pearson_per_gene

    pairs = common.shared_genes(pair.reference, pair.spatial)
    ref_to_sp = dict(pairs)
    genes = [r for r, _ in pairs]
    groups = gene_folds(genes, args.folds, args.seed, order=args.fold_order)
    methods = method_list(args.methods)
    gene_rows, fold_rows = [], []
    for f, held in enumerate(groups):
        held_set = set(held)
        train = [g for g in genes if g not in held_set]
        train_sp = [ref_to_sp[g] for g in train]
        measured = dense(pair.spatial, [ref_to_sp[g] for g in held]).astype(np.float64)
        # interleave: rotate the method order each fold so no method always runs first
        order = methods[f % len(methods) :] + methods[: f % len(methods)]
        for label, map_method in order:
            load = common.loadavg()
            t0 = time.perf_counter()
            knn_idx = None
            extra: dict[str, Any] = {}
            if label.startswith("ours"):
                pred, P, _, extra = run_ours(pair, train, held, args.epochs, args.seed, map_method)
            elif label == "tangram":
                pred, P, _ = run_tangram(pair, train, held, args.epochs, args.seed)
            elif label == "knn":
                pred, P, knn_idx = run_knn(pair, train, train_sp, held, args.k)
            elif label == "spage":
                pred, P, knn_idx, n_pv = run_spage(
                    pair, train, train_sp, held, args.spage_n_pv, args.spage_k
                )
                extra["n_pv"] = n_pv
            else:
                raise ValueError(f"unknown method {label}")
            dt = time.perf_counter() - t0
            r = pearson_per_gene(np.nan_to_num(pred, nan=0.0), measured)
            r[np.isnan(pred).all(axis=0)] = np.nan
            for g, v in zip(held, r, strict=True):
                gene_rows.append(
                    {"dataset": pair.name, "method": label, "fold": f, "gene": g, "pearson": v}
                )
            row = {
                "dataset": pair.name,
                "method": label,
                "fold": f,
                "n_train": len(train),
                "n_held": len(held),
                "time_s": dt,
                "loadavg_1m": load,
            }
            if "n_pv" in extra:
                row["n_pv"] = extra["n_pv"]
            outputs = [(label, pred, row)]
            if "default_projection" in extra:
                row["projection"] = extra["default_projection"]
            if "annot_scores" in extra:
                row.update(annotation_from_scores(pair, *extra["annot_scores"]))
            elif pair.ref_label is not None and (P is not None or knn_idx is not None):
                row.update(annotation_accuracy(pair, P, knn_idx))
            for lab, pr, rw in outputs:
                rr = r if lab == label else pearson_per_gene(np.nan_to_num(pr, nan=0.0), measured)
                if lab != label:
                    rr[np.isnan(pr).all(axis=0)] = np.nan
                    for g, v in zip(held, rr, strict=True):
                        gene_rows.append(
                            {
                                "dataset": pair.name,
                                "method": lab,
                                "fold": f,
                                "gene": g,
                                "pearson": v,
                            }
                        )
                fold_rows.append(rw)
            log(
                f"{pair.name} fold {f + 1}/{len(groups)} {label}: median r {np.nanmedian(r) if np.isfinite(r).any() else float('nan'):.3f}, {dt:.1f} s, load {load}"
            )
    genes_df = pd.DataFrame(gene_rows)
    folds_df = pd.DataFrame(fold_rows)
    summary = []
    for label in pd.unique(folds_df["method"]):
        g = genes_df[genes_df["method"] == label]["pearson"].to_numpy(dtype=np.float64)
        fr = folds_df[folds_df["method"] == label]
        row = {
            "dataset": pair.name,
            "method": label,
            "n_ref": pair.reference.n_obs,
            "n_sp": pair.spatial.n_obs,
            "n_genes": len(genes),
            "folds": args.folds,
            "epochs": args.epochs if label not in NO_EPOCHS else 0,
            "projection": (
                fr["projection"].iloc[0]
                if "projection" in fr and fr["projection"].notna().any()
                else PROJECTIONS.get(label, "Mᵀ S")
            ),
            "median_r": float(np.nanmedian(g)) if np.isfinite(g).any() else float("nan"),
            "mean_r": float(np.nanmean(g)) if np.isfinite(g).any() else float("nan"),
            "n_nan": int(np.isnan(g).sum()),
            "time_total_s": float(fr["time_s"].sum()),
            "time_per_fold_median_s": float(fr["time_s"].median()),
            "loadavg_mean": float(fr["loadavg_1m"].mean()),
        }
        if "accuracy" in fr.columns and fr["accuracy"].notna().any():
            row["annot_acc"] = float(fr["accuracy"].mean())
            row["annot_acc_known"] = float(fr["accuracy_known_labels"].mean())
            row["frac_known_labels"] = float(fr["frac_known_labels"].mean())
        summary.append(row)
    return genes_df, folds_df, pd.DataFrame(summary)


def scatter(genes_df: pd.DataFrame, name: str, out: Path) -> None:
    """Per-gene Pearson r of each ``ours[...]`` method (y) against tangram-sc (x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = genes_df.pivot_table(index="gene", columns="method", values="pearson", dropna=False)
    ours = [m for m in w.columns if str(m).startswith("ours")]
    if not ours or "tangram" not in w.columns:
        return
    x = w["tangram"].to_numpy()
    # series identical across engines (e.g. an engine-independent default projection) are drawn once
    merged: list[tuple[str, np.ndarray]] = []
    for m in ours:
        y = w[m].to_numpy()
        for i, (lab, y0) in enumerate(merged):
            if np.allclose(y, y0, equal_nan=True, atol=1e-9):
                merged[i] = (f"{lab} = {m}", y0)
                break
        else:
            merged.append((m, y))
    fig, ax = plt.subplots(figsize=(5.0, 4.6), dpi=120)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    lo, hi = 0.0, 0.1
    nan_txt = [f"tangram {int((~np.isfinite(x)).sum())}"]
    for c, (m, y) in zip(colors, merged, strict=False):
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(
            x[ok],
            y[ok],
            s=12,
            alpha=0.65,
            color=c,
            edgecolor="none",
            label=f"{m}{'' if m.endswith(' map') else ' (default projection)'}: median {np.nanmedian(y):.3f}",
        )
        if ok.any():
            lo = min(lo, float(np.min(x[ok])), float(np.min(y[ok])))
            hi = max(hi, float(np.max(x[ok])), float(np.max(y[ok])))
        nan_txt.append(f"ours {int((~np.isfinite(y)).sum())}")
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--")
    ax.set_xlabel(f"tangram-sc 1.0.4 (median {np.nanmedian(x):.3f})")
    ax.set_ylabel("this project")
    ax.legend(fontsize=7, loc="upper left")
    ep = genes_df.attrs.get("epochs", "")
    ax.set_title(
        f"{name}: held-out gene Pearson r{f' ({ep} epochs)' if ep else ''}\n"
        f"{len(w)} genes; NaN genes: {', '.join(dict.fromkeys(nan_txt))}",
        fontsize=8,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def replot(out_dir: Path, image_dir: Path) -> None:
    """Redraw every per-data-set scatter from the committed per-gene tables."""
    for p in sorted(out_dir.glob("accuracy_*_per_gene.csv")):
        name = p.name[len("accuracy_") : -len("_per_gene.csv")]
        df = pd.read_csv(p)
        summ = out_dir / f"accuracy_{name}_summary.csv"
        if summ.exists():
            df.attrs["epochs"] = int(pd.read_csv(summ)["epochs"].max())
        scatter(df, name, image_dir / f"bench_accuracy_{name}.png")


def rebuild_summary(out_dir: Path) -> pd.DataFrame:
    """Concatenate every per-data-set summary in ``out_dir`` into ``accuracy_summary.csv``."""
    parts = [pd.read_csv(p) for p in sorted(out_dir.glob("accuracy_*_summary.csv"))]
    if not parts:
        return pd.DataFrame()
    df = pd.concat(parts, ignore_index=True)
    common.write_csv(df, out_dir / "accuracy_summary.csv")
    return df


def _n_pv(v: str) -> int | str | None:
    if v == "auto":
        return None
    if v == "half":
        return v
    return int(v)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--datasets", nargs="+", default=list(common.DATASETS), choices=list(common.DATASETS)
    )
    p.add_argument("--folds", type=int, default=10)
    p.add_argument(
        "--fold-order",
        choices=["random", "sorted"],
        default="random",
        help="random: genes permuted with --seed; sorted: genes sorted by name, consecutive "
        "blocks (Li et al. 2022's KFold without shuffling)",
    )
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--methods",
        nargs="+",
        default=["ours", "spage", "knn", "tangram"],
        help="ours (the default run: the ensemble map), ours[tangram] (the Tangram map for "
        "--epochs), spage, knn, tangram (tangram-sc)",
    )
    p.add_argument("--k", type=int, default=10, help="neighbours of the kNN baseline")
    p.add_argument(
        "--spage-n-pv",
        type=_n_pv,
        default=None,
        help="SpaGE principal vectors: an integer, 'half' (int(n_train/2), Li et al. 2022) or "
        "'auto' (default: the SpaGE authors' 50, or 30 for panels of at most 50 genes)",
    )
    p.add_argument("--spage-k", type=int, default=50, help="neighbours of SpaGE (default 50)")
    p.add_argument("--max-cells", type=int, default=None, help="subsample each side (smoke tests)")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    p.add_argument(
        "--replot", action="store_true", help="only redraw plots and the summary from the tables"
    )
    p.add_argument("--out-dir", type=Path, default=common.BENCH_OUT, help="tables (CSV/JSON)")
    p.add_argument("--image-dir", type=Path, default=common.IMAGES, help="plots (PNG)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    if args.replot:
        replot(args.out_dir, args.image_dir)
        return rebuild_summary(args.out_dir)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = common.machine_info()
    info["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    log(f"machine: {info['cpu']}, {info['logical_cpus']} CPUs, load {info['loadavg_at_start']}")
    splits = {}
    for name in args.datasets:
        pair = subsample(common.load_pair(name), args.max_cells, args.seed)
        splits[name] = {
            "split": pair.split,
            "n_ref": pair.reference.n_obs,
            "n_sp": pair.spatial.n_obs,
        }
        log(f"{name}: reference {pair.reference.shape}, spatial {pair.spatial.shape}; {pair.split}")
        t0 = time.perf_counter()
        genes_df, folds_df, summary = evaluate_dataset(pair, args)
        common.write_csv(genes_df, args.out_dir / f"accuracy_{name}_per_gene.csv")
        common.write_csv(folds_df, args.out_dir / f"accuracy_{name}_folds.csv")
        common.write_csv(summary, args.out_dir / f"accuracy_{name}_summary.csv")
        genes_df.attrs["epochs"] = args.epochs
        scatter(genes_df, name, args.image_dir / f"bench_accuracy_{name}.png")
        splits[name]["wall_s"] = time.perf_counter() - t0
        print(summary.to_string(index=False), flush=True)
    info["datasets"] = splits
    info["loadavg_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    tag = "_".join(args.datasets) if set(args.datasets) != set(common.DATASETS) else "all"
    common.write_json(info, args.out_dir / f"accuracy_meta_{tag}.json")
    return rebuild_summary(args.out_dir)


if __name__ == "__main__":
    main()
