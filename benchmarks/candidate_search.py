"""Candidate search (issue 14): the approximate top-k search against the exact one.

Both users of the search are measured: the neighbourhood ensemble
(:func:`~napari_spatial_impute.core.neighbours.neighbour_weights`, the default map) and the lean
engine's candidates (:func:`~napari_spatial_impute.core.engine.candidates.candidate_pairs`).
``search="exact"`` compares every pair; ``search="approximate"`` uses the inverted-file index of
:mod:`napari_spatial_impute.core.engine.search`. Three measurements, one subcommand each; tables
go to ``--out-dir`` (default ``docs/bench``):

``shape``
    A seeded simulated pair (``common.simulate_pair``, log-normalised with the protocol's
    ``normalize_log1p``), its genes split by the protocol's first gene fold (10 folds, seed 0)
    into training and held-out genes. Each function runs on the training genes in a fresh
    process per search (exact and approximate interleaved, the order alternating per round):
    time of the call, peak RSS of the process (``VmHWM``) and its RSS before the call. The
    outputs are then compared: for the ensemble, the share of the exact map's pairs and of its
    weight that the approximate map also has, and the held-out genes' Pearson r (imputed as
    ``W S_heldout``, over all spatial cells); for the candidates, the share of the exact pairs
    found. ``candidate_search_shape.csv`` (runs), ``candidate_search_shape_summary.csv``.
``spaces``
    The same pair, per space of the ensemble (values as given, z-scores, joint PCA) and of the
    lean engine (gene-normalised): recall@k of the index search against the exact top-k on a
    seeded subset of ``--queries`` spatial cells, the index's build and search times, the
    lists and lists probed; with ``--pynndescent`` also pynndescent's NN-descent index (build,
    query and recall; numba's compilation is run once before, untimed).
    ``candidate_search_spaces.csv``.
``accuracy``
    The repo's leave-genes-out protocol (``nsi.cross_validate``, 10 folds, seed 0, the
    ensemble map, ``transform="none"`` on the protocol's normalised pairs from
    ``common.load_pair``) with ``search="exact"`` and ``search="approximate"`` (forced: these
    pairs are far below ``auto``'s threshold), and a stress variant that probes only a few lists
    (``--stress-fraction`` of them, about the share probed at the 50,000-cell shape). The
    real pairs are small, so the default rule probes most lists there; the weight share of the
    full map (all shared genes) says how far each variant was from the exact search.
    ``candidate_search_accuracy.csv`` (per pair and variant),
    ``candidate_search_accuracy_per_gene.csv``.

Usage::

    python benchmarks/candidate_search.py shape --n-ref 50000 --n-sp 50000 --genes 300
    python benchmarks/candidate_search.py spaces --n-ref 50000 --n-sp 50000 --genes 300 --pynndescent
    python benchmarks/candidate_search.py accuracy --pairs merfish_hypothalamus starmap_mpfc osmfish_sscortex
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402 (benchmarks/ is on the path from here)

SEARCHES = ("exact", "approximate")
#: The lean engine's defaults (candidates, reverse candidates).
LEAN_K, LEAN_R = 50, 5


# ----------------------------------------------------------------------------------- data
def make_matrices(n_ref: int, n_sp: int, genes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Training and held-out matrices of a simulated, log-normalised pair (dense float32)."""
    from napari_spatial_impute.core.metrics import gene_folds

    ref, spa = common.simulate_pair(n_ref, n_sp, genes, seed=seed)
    ref, spa = common.normalize_log1p(ref), common.normalize_log1p(spa)
    names = list(ref.var_names)
    held = set(gene_folds(names, 10, 0)[0])
    tr = np.array([g not in held for g in names])
    R = np.asarray(ref.X.toarray(), dtype=np.float32)
    S = np.asarray(spa.X.toarray(), dtype=np.float32)
    return {
        "S": np.ascontiguousarray(R[:, tr]),
        "G": np.ascontiguousarray(S[:, tr]),
        "S_held": np.ascontiguousarray(R[:, ~tr]),
        "G_held": np.ascontiguousarray(S[:, ~tr]),
    }


def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


# ----------------------------------------------------------------------------------- worker
def worker(data: str, what: str, search: str, out: str, threads: int | None) -> dict[str, Any]:
    """One timed call in this process; its output saved to ``out``."""
    import torch

    from napari_spatial_impute.core.engine.candidates import candidate_pairs
    from napari_spatial_impute.core.metrics import pearson_per_gene
    from napari_spatial_impute.core.neighbours import neighbour_weights

    if threads:
        torch.set_num_threads(threads)
    d = np.load(data)
    S, G = d["S"], d["G"]
    rss_before = _status_kib("VmRSS") * 1024
    row: dict[str, Any] = {"what": what, "search": search, "load_before": common.loadavg()}
    t0 = time.perf_counter()
    if what == "ensemble":
        W = neighbour_weights(S, G, search=search, seed=0)
        row["seconds"] = time.perf_counter() - t0
        row["peak_rss_bytes"] = common.peak_rss_bytes()
        pred = np.asarray(W @ d["S_held"])
        r = pearson_per_gene(pred, d["G_held"])
        row["held_out_median_pearson"] = float(np.nanmedian(r))
        row["held_out_mean_pearson"] = float(np.nanmean(r))
        row["nnz"] = int(W.nnz)
        sp.save_npz(out, W.tocsr(), compressed=False)
        np.save(out + ".pearson.npy", r)
    else:
        rows, cols = candidate_pairs(
            torch.from_numpy(S), torch.from_numpy(G), LEAN_K, LEAN_R, search=search, seed=0
        )
        row["seconds"] = time.perf_counter() - t0
        row["peak_rss_bytes"] = common.peak_rss_bytes()
        row["nnz"] = int(rows.shape[0])
        np.savez(out, rows=rows.numpy(), cols=cols.numpy())
    row["rss_before_bytes"] = rss_before
    row["threads"] = torch.get_num_threads()
    row["load_after"] = common.loadavg()
    return row


def _pair_keys(path: str, what: str, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Sorted pair keys (spatial * n + reference) of a saved output, and the weights."""
    if what == "ensemble":
        W = sp.load_npz(path).tocoo()
        key = W.row.astype(np.int64) * n + W.col
        order = np.argsort(key)
        return key[order], W.data[order]
    z = np.load(path)
    return np.sort(z["cols"].astype(np.int64) * n + z["rows"]), None


# ----------------------------------------------------------------------------------- shape
def run_shape(args: argparse.Namespace, out_dir: Path) -> pd.DataFrame:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="nsi_cs_"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"pair_{args.n_ref}x{args.n_sp}x{args.genes}.npz"
    if not data.exists():
        common.log(f"simulating {args.n_ref} x {args.n_sp} x {args.genes}")
        np.savez(data, **make_matrices(args.n_ref, args.n_sp, args.genes))
    shape = f"{args.n_ref}x{args.n_sp}x{args.genes}"
    rows = []
    for what in args.what:
        for rep in range(args.repeats):
            order = SEARCHES if rep % 2 == 0 else SEARCHES[::-1]
            for search in order:
                out = str(work / f"{what}_{search}_{rep}.npz")
                cmd = [sys.executable, str(Path(__file__).resolve())]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                cmd += ["_worker", "--data", str(data), "--what", what, "--search", search]
                cmd += ["--out", out]
                common.log(f"{what} {search} round {rep + 1}")
                res = common.run_measured(cmd, timeout=args.timeout)
                if "error" in res:
                    raise RuntimeError(f"{what} {search}: {res['error']}")
                res.update({"shape": shape, "round": rep, "out": out})
                rows.append(res)
                common.log(
                    f"  {res['seconds']:.1f} s, peak {res['peak_rss_bytes'] / 2**30:.2f} GiB"
                )
    runs = pd.DataFrame(rows)
    n = args.n_ref
    summary = []
    for what in args.what:
        mine = runs[runs["what"] == what]
        ex = mine[mine["search"] == "exact"]
        ap = mine[mine["search"] == "approximate"]
        ke, we = _pair_keys(ex["out"].iloc[0], what, n)
        ka, _ = _pair_keys(ap["out"].iloc[0], what, n)
        shared = np.isin(ke, ka, assume_unique=True)
        rec: dict[str, Any] = {
            "what": what,
            "shape": shape,
            "exact_s_median": float(ex["seconds"].median()),
            "approximate_s_median": float(ap["seconds"].median()),
            "time_ratio": float(ap["seconds"].median() / ex["seconds"].median()),
            "exact_peak_gib": float(ex["peak_rss_bytes"].max() / 2**30),
            "approximate_peak_gib": float(ap["peak_rss_bytes"].max() / 2**30),
            "exact_peak_over_data_gib": float(
                (ex["peak_rss_bytes"] - ex["rss_before_bytes"]).max() / 2**30
            ),
            "approximate_peak_over_data_gib": float(
                (ap["peak_rss_bytes"] - ap["rss_before_bytes"]).max() / 2**30
            ),
            "pair_recall": float(shared.mean()),
            "repeats": args.repeats,
            "load_min": float(mine[["load_before", "load_after"]].min().min()),
            "load_max": float(mine[["load_before", "load_after"]].max().max()),
        }
        rec["peak_ratio"] = rec["approximate_peak_gib"] / rec["exact_peak_gib"]
        if we is not None:
            rec["weight_recall"] = float(we[shared].sum() / we.sum())
            pe = np.load(ex["out"].iloc[0] + ".pearson.npy")
            pa = np.load(ap["out"].iloc[0] + ".pearson.npy")
            rec["exact_median_pearson"] = float(np.nanmedian(pe))
            rec["approximate_median_pearson"] = float(np.nanmedian(pa))
            rec["max_abs_pearson_change"] = float(np.nanmax(np.abs(pa - pe)))
        summary.append(rec)
    summ = pd.DataFrame(summary)
    tag = f"_{args.tag}" if args.tag else ""
    common.write_csv(runs.drop(columns=["out"]), out_dir / f"candidate_search_shape{tag}.csv")
    common.write_csv(summ, out_dir / f"candidate_search_shape_summary{tag}.csv")
    return summ


# ----------------------------------------------------------------------------------- spaces
def search_spaces(S: np.ndarray, G: np.ndarray) -> dict[str, tuple[Any, Any, int]]:
    """The unit database and query rows of each space, and its k, as the two users build them."""
    import torch

    from napari_spatial_impute.core.engine.candidates import _normalised
    from napari_spatial_impute.core.engine.search import unit_rows
    from napari_spatial_impute.core.neighbours import MEMBERS, PCA_COMPONENTS, _zscore

    St, Gt = torch.from_numpy(S), torch.from_numpy(G)
    Sz, Gz = _zscore(St), _zscore(Gt)
    cov = (Sz.t() @ Sz + Gz.t() @ Gz) / float(S.shape[0] + G.shape[0])
    V = torch.linalg.eigh(cov.double())[1][:, -min(PCA_COMPONENTS, S.shape[1]) :].float()
    k = {space: max(m.k for m in MEMBERS if m.space == space) for space in ("raw", "z", "pca")}
    return {
        "raw": (unit_rows(St), unit_rows(Gt), k["raw"]),
        "z": (unit_rows(Sz), unit_rows(Gz), k["z"]),
        "pca": (unit_rows(Sz @ V), unit_rows(Gz @ V), k["pca"]),
        "lean": (_normalised(St), _normalised(Gt, Gt.norm(dim=0, keepdim=True)), LEAN_K),
        "lean_reverse": (
            _normalised(Gt, Gt.norm(dim=0, keepdim=True)),
            _normalised(St),
            LEAN_R,
        ),
    }


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(np.intersect1d(a, b)) for a, b in zip(found, exact, strict=True)]
    return float(np.mean(hits)) / exact.shape[1]


def run_spaces(args: argparse.Namespace, out_dir: Path) -> pd.DataFrame:
    import torch

    from napari_spatial_impute.core.engine.search import ClusterIndex, exact_top_k

    if args.threads:
        torch.set_num_threads(args.threads)
    d = make_matrices(args.n_ref, args.n_sp, args.genes)
    rows = []
    for space, (D, Q, k) in search_spaces(d["S"], d["G"]).items():
        k = min(k, D.shape[0])
        rng = np.random.default_rng(0)
        sub = torch.from_numpy(
            np.sort(rng.choice(Q.shape[0], min(args.queries, Q.shape[0]), False))
        )
        t = time.perf_counter()
        exact = exact_top_k(D, Q[sub], k)[1].numpy()
        exact_s = (time.perf_counter() - t) * Q.shape[0] / len(sub)
        t = time.perf_counter()
        index = ClusterIndex(D, seed=0)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        found = index.search(Q, k)[1]
        search_s = time.perf_counter() - t
        rows.append(
            {
                "shape": f"{args.n_ref}x{args.n_sp}x{args.genes}",
                "space": space,
                "method": "cluster index",
                "database": D.shape[0],
                "queries": Q.shape[0],
                "dims": D.shape[1],
                "k": k,
                "lists": index.lists,
                "probed": index.probes(k),
                f"recall_at_k_{len(sub)}_queries": _recall(found[sub].numpy(), exact),
                "build_s": build_s,
                "search_s": search_s,
                "exact_s_extrapolated": exact_s,
                "load": common.loadavg(),
            }
        )
        common.log(str(rows[-1]))
        if args.pynndescent and space in ("raw", "z"):
            rows.append(_pynndescent_row(D, Q, k, sub, exact, rows[-1]))
            common.log(str(rows[-1]))
    df = pd.DataFrame(rows)
    tag = f"_{args.tag}" if args.tag else ""
    common.write_csv(df, out_dir / f"candidate_search_spaces{tag}.csv")
    return df


def _pynndescent_row(D: Any, Q: Any, k: int, sub: Any, exact: np.ndarray, base: dict) -> dict:
    import pynndescent

    Dn, Qn = D.numpy(), Q.numpy()
    pynndescent.NNDescent(Dn[:300], metric="dot", n_neighbors=10, random_state=0).query(
        Qn[:5], k=3
    )  # numba's compilation, untimed
    t = time.perf_counter()
    index = pynndescent.NNDescent(Dn, metric="dot", n_neighbors=30, random_state=0)
    index.prepare()
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    found, _ = index.query(Qn, k=k)
    search_s = time.perf_counter() - t
    row = dict(base)
    row.update(
        {
            "method": f"pynndescent {pynndescent.__version__} (n_neighbors 30, epsilon 0.1)",
            "lists": np.nan,
            "probed": np.nan,
            f"recall_at_k_{len(sub)}_queries": _recall(found[sub.numpy()], exact),
            "build_s": build_s,
            "search_s": search_s,
            "load": common.loadavg(),
        }
    )
    return row


# ----------------------------------------------------------------------------------- accuracy
def _variant(name: str, n_ref: int, fraction: float) -> dict[str, int]:
    """Module constants of the search for a variant: the stress one probes a few lists."""
    from napari_spatial_impute.core.engine import search

    if name != "approximate_stress":
        return {"CANDIDATE_FACTOR": search.CANDIDATE_FACTOR, "MIN_PROBES": search.MIN_PROBES}
    return {"CANDIDATE_FACTOR": 0, "MIN_PROBES": max(1, round(fraction * search.n_lists(n_ref)))}


def run_accuracy(args: argparse.Namespace, out_dir: Path) -> pd.DataFrame:
    import napari_spatial_impute as nsi
    from napari_spatial_impute.core.engine import search as search_mod

    variants = ("exact", "approximate", "approximate_stress")
    defaults = {
        "CANDIDATE_FACTOR": search_mod.CANDIDATE_FACTOR,
        "MIN_PROBES": search_mod.MIN_PROBES,
    }
    per_gene, summary = [], []
    for name in args.pairs:
        pair = common.load_pair(name)
        ref, spa = pair.reference, pair.spatial
        if args.max_cells:
            from accuracy import subsample

            pair = subsample(pair, args.max_cells, 0)
            ref, spa = pair.reference, pair.spatial
        results: dict[str, pd.DataFrame] = {}
        full: dict[str, sp.csr_matrix] = {}
        for variant in variants:
            consts = _variant(variant, ref.n_obs, args.stress_fraction)
            for key, value in consts.items():
                setattr(search_mod, key, value)
            mode = "exact" if variant == "exact" else "approximate"
            try:
                t = time.perf_counter()
                df = nsi.cross_validate(
                    ref, spa, folds=args.folds, seed=0, transform="none", search=mode
                )
                cv_s = time.perf_counter() - t
                res = nsi.map_cells_to_space(
                    ref, spa, transform="none", search=mode, uncertainty=False
                )
            finally:
                for key, value in defaults.items():
                    setattr(search_mod, key, value)
            assert res.params["search"] == mode and res.neighbours is not None
            full[variant] = res.neighbours.tocsr()
            results[variant] = df
            lists = search_mod.n_lists(ref.n_obs)
            probed = {
                f"probed_k{k}": max(
                    1,
                    min(
                        lists,
                        max(
                            consts["MIN_PROBES"],
                            math.ceil(consts["CANDIDATE_FACTOR"] * k / (ref.n_obs / lists)),
                        ),
                    ),
                )
                for k in (10, 50, 100)
            }
            summary.append(
                {
                    "pair": name,
                    "variant": variant,
                    "reference_cells": ref.n_obs,
                    "spatial_cells": spa.n_obs,
                    "genes": int(df["gene"].nunique()),
                    "folds": args.folds,
                    "lists": lists if variant != "exact" else np.nan,
                    **({k: v for k, v in probed.items()} if variant != "exact" else {}),
                    "median_pearson": float(np.nanmedian(df["pearson"])),
                    "mean_pearson": float(np.nanmean(df["pearson"])),
                    "cv_seconds": cv_s,
                    "load": common.loadavg(),
                }
            )
            common.log(str(summary[-1]))
            for row in df.itertuples(index=False):
                per_gene.append(
                    {"pair": name, "variant": variant, "gene": row.gene, "pearson": row.pearson}
                )
        We = full["exact"]
        for rec in summary:
            if rec["pair"] != name:
                continue
            Wa = full[rec["variant"]]
            rec["weight_recall_full_map"] = float(We.multiply(Wa > 0).sum() / We.sum())
            delta = (
                results[rec["variant"]]["pearson"].to_numpy()
                - results["exact"]["pearson"].to_numpy()
            )
            rec["median_pearson_change"] = rec["median_pearson"] - float(
                np.nanmedian(results["exact"]["pearson"])
            )
            rec["max_abs_gene_change"] = float(np.nanmax(np.abs(delta)))
    summ = pd.DataFrame(summary)
    tag = f"_{args.tag}" if args.tag else ""
    common.write_csv(summ, out_dir / f"candidate_search_accuracy{tag}.csv")
    common.write_csv(
        pd.DataFrame(per_gene), out_dir / f"candidate_search_accuracy_per_gene{tag}.csv"
    )
    return summ


# ----------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> pd.DataFrame | dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", default=str(common.BENCH_OUT))
    p.add_argument("--tag", default="", help="suffix of the output files")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("shape", "spaces"):
        s = sub.add_parser(name)
        s.add_argument("--n-ref", type=int, default=50_000)
        s.add_argument("--n-sp", type=int, default=50_000)
        s.add_argument("--genes", type=int, default=300)
        if name == "shape":
            s.add_argument("--what", nargs="+", default=["ensemble", "lean"])
            s.add_argument("--repeats", type=int, default=1)
            s.add_argument("--timeout", type=float, default=None)
            s.add_argument("--work-dir", default=None, help="the simulated pair and outputs")
        else:
            s.add_argument("--queries", type=int, default=2000)
            s.add_argument("--pynndescent", action="store_true")
    a = sub.add_parser("accuracy")
    a.add_argument(
        "--pairs", nargs="+", default=["merfish_hypothalamus", "starmap_mpfc", "osmfish_sscortex"]
    )
    a.add_argument("--folds", type=int, default=10)
    a.add_argument("--stress-fraction", type=float, default=0.07)
    a.add_argument("--max-cells", type=int, default=None, help="subsample (smoke tests)")
    w = sub.add_parser("_worker")
    w.add_argument("--data", required=True)
    w.add_argument("--what", choices=("ensemble", "lean"), required=True)
    w.add_argument("--search", choices=SEARCHES, required=True)
    w.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.command == "_worker":
        row = worker(args.data, args.what, args.search, args.out, args.threads)
        print(json.dumps(row))
        return row
    out_dir = Path(args.out_dir)
    meta = {**common.machine_info(), "argv": sys.argv[1:] if argv is None else argv}
    tag = f"_{args.tag}" if args.tag else ""
    if args.command == "shape":
        df = run_shape(args, out_dir)
    elif args.command == "spaces":
        df = run_spaces(args, out_dir)
    else:
        df = run_accuracy(args, out_dir)
    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    common.write_json(meta, out_dir / f"candidate_search_meta_{args.command}{tag}.json")
    print(common.md_table(df))
    return df


if __name__ == "__main__":
    main()
