"""Whole-process time of a 10-fold leave-genes-out run: ``evaluate`` vs SpaGE and kNN (issue 15).

Each run is a fresh Python process started from the shell, timed from start to exit (imports,
reading the two ``.h5ad`` files, normalising, every fold, writing the per-gene table), on the
same files and the same folds (``gene_folds(shared genes, 10, seed 0)``, normalise_log1p of each
set):

* ``ours``: ``napari-spatial-impute evaluate --transform normalize_log1p`` with every other
  setting at its default (the ensemble map, intervals and reliability calibrated in each fold);
* ``ours --no-uncertainty``: the same without the calibration (imputed values only);
* ``spage`` / ``knn``: this script's worker running ``peers.spage`` (k = 50) or the mean of the
  10 nearest reference cells by cosine distance (scikit-learn, brute force) per fold.

Runs are interleaved (``--repeats`` rounds, the order rotated each round); the median is
reported. Usage::

    python benchmarks/cv_time.py --repeats 3 --out docs/bench/cv_time.csv
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(method: str, reference: str, spatial: str, out: str) -> None:
    """One peer's 10-fold run in this (fresh) process."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(HERE))
    from napari_spatial_impute.core.genes import match_genes
    from napari_spatial_impute.core.metrics import gene_folds, pearson_per_gene
    from napari_spatial_impute.core.preprocess import apply_transform, dense_columns

    ref = ad.read_h5ad(reference)
    spa = ad.read_h5ad(spatial)
    ref.X = apply_transform(ref, "normalize_log1p").X
    spa.X = apply_transform(spa, "normalize_log1p").X
    pairs = match_genes(ref.var_names, spa.var_names)
    genes = [r for r, _ in pairs]
    to_sp = dict(pairs)
    rows = []
    for f, held in enumerate(gene_folds(genes, 10, 0)):
        held_set = set(held)
        train = [g for g in genes if g not in held_set]
        A = dense_columns(ref, train)
        B = dense_columns(spa, [to_sp[g] for g in train])
        H = dense_columns(ref, held)
        if method == "spage":
            from peers import spage

            pred = spage(A, B, H, k=50)
        else:
            from sklearn.neighbors import NearestNeighbors

            nn = NearestNeighbors(n_neighbors=10, metric="cosine", algorithm="brute").fit(A)
            pred = H[nn.kneighbors(B)[1]].mean(axis=1)
        measured = dense_columns(spa, [to_sp[g] for g in held])
        for g, r in zip(held, pearson_per_gene(pred, measured), strict=True):
            rows.append({"gene": g, "fold": f, "pearson": r})
    df = pd.DataFrame(rows)
    df.to_csv(out, index=False)
    print(f"{method}: median pearson {np.nanmedian(df['pearson']):.3f}")


def _commands(reference: str, spatial: str, out: str) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "napari_spatial_impute.cli", "evaluate"]
    common = ["-r", reference, "-s", spatial, "--transform", "normalize_log1p", "--folds", "10"]
    me = [sys.executable, str(Path(__file__).resolve()), "worker"]
    return {
        "ours": [*cli, *common, "-o", out],
        "ours --no-uncertainty": [*cli, *common, "--no-uncertainty", "-o", out],
        "spage": [*me, "spage", reference, spatial, out],
        "knn": [*me, "knn", reference, spatial, out],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        worker(*argv[1:5])
        return 0
    sys.path.insert(0, str(HERE))
    import common
    import pandas as pd

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="merfish_hypothalamus")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(common.BENCH_OUT / "cv_time.csv"))
    args = p.parse_args(argv)
    root = common.data_dir()
    if root is None:
        print("shared data folder not found: nothing measured", file=sys.stderr)
        return 1
    reference = str(root / args.dataset / "reference.h5ad")
    spatial = str(root / args.dataset / "spatial.h5ad")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cmds = _commands(reference, spatial, os.path.join(tmp, "cv.csv"))
        names = list(cmds)
        for rep in range(args.repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                proc = subprocess.run(cmds[name], capture_output=True, text=True, check=False)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed: {proc.stderr.strip().splitlines()[-1:]}")
                last = proc.stdout.strip().splitlines()
                median = pd.read_csv(os.path.join(tmp, "cv.csv"))["pearson"].median()
                rows.append(
                    {
                        "method": name,
                        "repeat": rep,
                        "wall_s": wall,
                        "median_pearson": median,
                        "loadavg_1m": load,
                    }
                )
                common.log(
                    f"{name}: {wall:.1f} s, median r {median:.3f} ({last[0] if last else ''})"
                )
    df = pd.DataFrame(rows)
    common.write_csv(df, Path(args.out))
    summary = df.groupby("method", sort=False).agg(
        wall_s_median=("wall_s", "median"),
        wall_s_min=("wall_s", "min"),
        median_pearson=("median_pearson", "first"),
    )
    spage_s = summary.loc["spage", "wall_s_median"]
    summary["vs_spage"] = summary["wall_s_median"] / spage_s
    print(summary.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
