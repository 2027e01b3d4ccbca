"""Hard pairs: the benchmark pairs and variants of them where the maps may disagree.

On a held-back cross-platform pair (seqFISH with a quantile-normalised Smart-seq reference) the
ensemble map was much weaker than the Tangram map. This script builds such pairs from the data
here and scores every method side by side on the same gene folds, to develop and test an
automatic choice between the maps.

Pairs (``--pairs``), each ``BASE`` or ``BASE:VARIANT`` with BASE one of
``merfish_hypothalamus``, ``starmap_mpfc``, ``osmfish_sscortex`` (:func:`common.load_pair`'s
cells and splits, rebuilt from the raw files by :func:`common.load_raw_pair`):

* ``BASE``: the protocol pair (each set normalised to its median total over its own genes,
  then ``log1p``, once, before splitting);
* ``BASE:log1p`` / ``BASE:quantile`` / ``BASE:zscore`` / ``BASE:zscore_shift``: the REFERENCE
  preprocessed otherwise (:func:`common.reference_variant`): log1p of raw counts without size
  normalisation; quantile-normalised raw counts (mean sorted profile at each cell's ranks, ties
  at their average rank) then log1p; the protocol's values z-scored per gene (negative values);
  the same minus each gene's minimum. The spatial side is the protocol's;
* ``BASE:platform``: the SPATIAL side re-measured through a simulated platform
  (:func:`common.simulate_platform`: per-gene detection efficiency ``min(1, lognormal(0, 1))``,
  seeded by ``--seed``, binomial thinning of the raw counts), then normalised by the protocol on
  its own; the reference is the protocol's;
* ``BASE:platform+quantile``: that spatial side with the quantile-normalised reference (the
  seqFISH + quantile-normalised Smart-seq situation);
* ``BASE:platform_low`` / ``BASE:platform_low+quantile``: the same with a lower efficiency,
  ``min(1, lognormal(log 0.2, 1))`` per gene (median 0.2: about a fifth of the counts kept);
* ``starmap_mpfc>merfish_mop`` (``:quantile``): a real cross-platform pair: every STARmap mPFC
  cell (3 sections, 158 genes) as the reference, the MERFISH MOp cells of ``slice1`` (2,109
  cells, 254 genes, volume-normalised values as distributed) as the spatial assay; 40 shared
  genes; another cortical area, another platform. Each set normalised by the protocol.

Methods (``--methods``), on the same folds (:func:`napari_spatial_impute.core.metrics.gene_folds`,
``--folds``, ``--seed``); every method trains on the fold's other shared genes only:

* ``ensemble``: ``map_cells_to_space(method="ensemble")``; ``tangram``:
  ``map_cells_to_space(method="tangram")`` (default epochs and plateau ``tol``); ``default``:
  ``map_cells_to_space`` with no ``method`` (whatever the package's default is at run time; the
  map it chose is recorded). All with ``transform="none"``, ``uncertainty=False`` and
  ``seed=--seed``; imputation = the result's ``project_genes``;
* ``spage`` and ``knn``: ``accuracy.run_spage`` / ``accuracy.run_knn`` (SpaGE's defaults; k=10);
* ``size``: a size baseline: each spatial cell's total raw count over the fold's training genes
  (before any normalisation), the same prediction for every held-out gene.

Score: Pearson r per held-out gene over all spatial cells against the measured log-normalised
values (NaN where a method refuses the pair or predicts a constant). Outputs in ``--out``:
``per_gene.csv`` and ``folds.csv`` (merged: a run replaces only the (pair, method) rows it
ran, so ``--methods default`` fills the default column later), ``summary.csv`` / ``summary.md``
(median r per pair x method, wins of ``default`` against each other method), ``errors.csv``
(refusals, with the message) and ``meta.json`` (machine, arguments, wall times, one entry per run).

Usage::

    python benchmarks/hard_pairs.py                        # every pair, every method but default
    python benchmarks/hard_pairs.py --methods default      # fill in the default column
    python benchmarks/hard_pairs.py --pairs starmap_mpfc:platform+quantile --methods ensemble tangram
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_spatial_impute.core.project import project_genes

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy
import common
from common import Pair, dense, log

BASES = list(common.DATASETS)
PLATFORM_VARIANTS = ("platform", "platform+quantile", "platform_low", "platform_low+quantile")
#: per-gene detection efficiency of the simulated platforms: min(1, lognormal(mu, 1))
PLATFORM_MU = {"platform": 0.0, "platform_low": float(np.log(0.2))}
#: real cross-platform pairs: name -> (reference data set, spatial data set, spatial slice)
CROSS = {"starmap_mpfc>merfish_mop": ("starmap_mpfc", "merfish_mop", "slice1")}
#: the reference as a portal's cluster-mean matrix: one mean profile (of the protocol's values)
#: per cell type, as the ISS CA1 reference here is distributed
PROFILE_VARIANT = "profiles"
#: the label column of each base pair's reference used for ``profiles``
PROFILE_LABELS = {
    "merfish_hypothalamus": "cell_type",
    "starmap_mpfc": "cluster",
    "osmfish_sscortex": "ClusterName",
}
#: synthetic pairs: one noise-free reference cell per type (tests/_data.make_profile_pair),
#: where the ensemble averages several types and the Tangram map does not
SYNTHETIC = {"synthetic_profiles": {"n_types": 16, "per_type": 1, "n_sp": 600, "n_genes": 60}}
VARIANTS = (*common.REFERENCE_VARIANTS, *PLATFORM_VARIANTS, PROFILE_VARIANT)
#: the default pairs: the originals, every reference variant of each, the platform variants of
#: the cell-split pairs (same tissue, same assay: the simulated platform is the only mismatch)
DEFAULT_PAIRS = (
    BASES
    + [f"{b}:{v}" for b in BASES for v in common.REFERENCE_VARIANTS]
    + [f"{b}:{v}" for b in ("starmap_mpfc", "osmfish_sscortex") for v in PLATFORM_VARIANTS[:2]]
    + [f"{b}:platform_low+quantile" for b in ("starmap_mpfc", "osmfish_sscortex")]
    + [p for c in CROSS for p in (c, f"{c}:quantile")]
    + [f"{b}:{PROFILE_VARIANT}" for b in BASES]
    + list(SYNTHETIC)
)
MAP_METHODS = {"ensemble": "ensemble", "tangram": "tangram", "default": None}
METHODS = ("ensemble", "tangram", "default", "spage", "knn", "size")
DEFAULT_METHODS = [m for m in METHODS if m != "default"]
KEY = ["pair", "method", "fold", "gene"]

# --------------------------------------------------------------------------------------------
# pairs


class HardPair:
    """A :class:`common.Pair` plus the raw counts of its spatial cells (the size baseline)."""

    def __init__(self, pair: Pair, spatial_raw: Any, note: str) -> None:
        self.pair = pair
        self.spatial_raw = spatial_raw
        self.note = note


_RAW: dict[str, tuple[Any, Any]] = {}
_PROTO: dict[str, Pair] = {}


def build_pair(spec: str, seed: int) -> HardPair:
    """The pair named ``spec`` (``BASE`` or ``BASE:VARIANT``, see the module docstring)."""
    base, _, variant = spec.partition(":")
    if base in SYNTHETIC:
        return synthetic_pair(base, seed)
    if base not in BASES and base not in CROSS:
        raise ValueError(f"unknown base pair {base!r}; known: {', '.join([*BASES, *CROSS])}")
    if variant and variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    if base in CROSS and variant not in ("", *common.REFERENCE_VARIANTS):
        raise ValueError(f"{base} takes reference variants only")
    if base not in _PROTO and base in CROSS:
        _PROTO[base], _RAW[base] = load_cross(base)
    elif base not in _PROTO:
        _PROTO[base] = common.load_pair(base)
        _RAW[base] = common.load_raw_pair(base)
    proto = _PROTO[base]
    raw_ref, raw_sp = _RAW[base]
    ref, spa, sp_raw = proto.reference, proto.spatial, raw_sp.X
    note = proto.split
    if variant in common.REFERENCE_VARIANTS:
        ref = common.reference_variant(raw_ref, proto.reference, variant)
        note += f"; reference: {variant}"
    elif variant in PLATFORM_VARIANTS:
        mu = PLATFORM_MU[variant.split("+")[0]]
        thinned, eff = common.simulate_platform(raw_sp, seed=seed, sigma=1.0, mu=mu)
        spa = common.normalize_log1p(thinned)
        sp_raw = thinned.X
        kept = float(thinned.X.sum() / raw_sp.X.sum())
        note += (
            f"; spatial re-measured: per-gene efficiency min(1, lognormal({mu:.2f}, 1)), seed {seed} "
            f"(median {np.median(eff):.2f}, {int((eff < 0.1).sum())} of {len(eff)} genes under "
            f"0.1), binomial thinning ({kept:.0%} of counts kept), normalised on its own"
        )
        if variant.endswith("+quantile"):
            ref = common.reference_variant(raw_ref, proto.reference, "quantile")
            note += "; reference: quantile"
    elif variant == PROFILE_VARIANT:
        ref = class_profiles(proto.reference, raw_ref.obs[PROFILE_LABELS[base]])
        note += f"; reference: {ref.n_obs} class mean profiles ({PROFILE_LABELS[base]})"
    pair = Pair(spec, ref, spa, proto.ref_label, proto.sp_label, note)
    return HardPair(pair, sp_raw, note)


def class_profiles(reference: Any, labels: Any) -> Any:
    """One mean profile per label of ``reference``'s values (cells in ``reference``'s order)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    X = reference.X.toarray() if sp.issparse(reference.X) else np.asarray(reference.X)
    lab = np.asarray(labels).astype(str)
    names = sorted(set(lab))
    M = np.stack([X[lab == n].mean(axis=0) for n in names]).astype(np.float32)
    obs = pd.DataFrame({"label": names}, index=[f"profile_{n}" for n in names])
    return ad.AnnData(X=M, obs=obs, var=pd.DataFrame(index=reference.var_names.copy()))


def synthetic_pair(name: str, seed: int) -> HardPair:
    """A :data:`SYNTHETIC` pair, each set normalised by the protocol (raw spatial for size)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _data import make_profile_pair

    ref, spa = make_profile_pair(**SYNTHETIC[name], seed=seed + 1)
    note = "synthetic: one noise-free reference cell per type (tests/_data.make_profile_pair)"
    pair = Pair(name, common.normalize_log1p(ref), common.normalize_log1p(spa), None, None, note)
    return HardPair(pair, spa.X, note)


def load_cross(name: str) -> tuple[Pair, tuple[Any, Any]]:
    """A real cross-platform pair (:data:`CROSS`): ``(protocol pair, (raw reference, raw spatial))``."""
    import anndata as ad

    ref_name, sp_name, slice_ = CROSS[name]
    root = common.data_dir()
    if root is None:
        raise FileNotFoundError("shared data folder not found (set NSI_DATA_DIR)")
    raw_ref = common._strip_reference(ad.read_h5ad(root / ref_name / "spatial.h5ad"))
    raw_sp = ad.read_h5ad(root / sp_name / "spatial.h5ad")
    if slice_ is not None:
        raw_sp = raw_sp[(raw_sp.obs["slice"].astype(str) == slice_).to_numpy()].copy()
    split = (
        f"{ref_name} (all cells) reference, {sp_name}"
        f"{f' {slice_}' if slice_ else ''} spatial: another platform and area"
    )
    pair = Pair(
        name, common.normalize_log1p(raw_ref), common.normalize_log1p(raw_sp), None, None, split
    )
    return pair, (raw_ref, raw_sp)


# --------------------------------------------------------------------------------------------
# methods: each returns (pred [n_sp x held], info dict)


def run_map(
    pair: Pair, train: list[str], held: list[str], seed: int, method: str | None
) -> tuple[np.ndarray, dict[str, Any]]:
    from napari_spatial_impute import map_cells_to_space

    kw: dict[str, Any] = {} if method is None else {"method": method}
    res = map_cells_to_space(
        pair.reference,
        pair.spatial,
        genes=train,
        seed=seed,
        transform="none",
        uncertainty=False,
        **kw,
    )
    used = {g.lower() for g in res.genes.training_reference}
    assert not (used & {g.lower() for g in held}), "held-out gene reached training"
    pred = np.asarray(project_genes(res, held).X, dtype=np.float64)
    params = getattr(res, "params", {}) or {}
    names = {"method": "method_chosen", "epochs_done": "epochs_done", "stop_reason": "stop_reason"}
    info = {new: params[k] for k, new in names.items() if k in params}
    return pred, info


def run_size(hp: HardPair, train_sp: list[str], n_held: int) -> np.ndarray:
    """Each spatial cell's total raw count over the training genes, for every held-out gene."""
    idx = hp.pair.spatial.var_names.get_indexer(train_sp)
    X = hp.spatial_raw[:, idx]
    tot = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    return np.repeat(tot[:, None], n_held, axis=1)


def evaluate(hp: HardPair, args: argparse.Namespace) -> tuple[list[dict], list[dict], list[dict]]:
    from napari_spatial_impute.core.metrics import gene_folds, pearson_per_gene

    pair = hp.pair
    shared = common.shared_genes(pair.reference, pair.spatial)
    ref_to_sp = dict(shared)
    genes = [r for r, _ in shared]
    groups = gene_folds(genes, args.folds, args.seed)
    methods = list(args.methods)
    gene_rows: list[dict] = []
    fold_rows: list[dict] = []
    errors: list[dict] = []
    refused: dict[str, str] = {}
    for f, held in enumerate(groups):
        held_set = set(held)
        train = [g for g in genes if g not in held_set]
        train_sp = [ref_to_sp[g] for g in train]
        measured = dense(pair.spatial, [ref_to_sp[g] for g in held]).astype(np.float64)
        order = methods[f % len(methods) :] + methods[: f % len(methods)]
        for m in order:
            if m == "tangram" and args.tangram_folds and f >= args.tangram_folds:
                continue
            info: dict[str, Any] = {}
            load = common.loadavg()
            t0 = time.perf_counter()
            pred = None
            if m in refused:
                info["error"] = refused[m]
            else:
                try:
                    if m in MAP_METHODS:
                        pred, info = run_map(pair, train, held, args.seed, MAP_METHODS[m])
                    elif m == "spage":
                        pred, _, _, n_pv = accuracy.run_spage(
                            pair, train, train_sp, held, None, args.spage_k
                        )
                        info["n_pv"] = n_pv
                    elif m == "knn":
                        pred, _, _ = accuracy.run_knn(pair, train, train_sp, held, args.k)
                    elif m == "size":
                        pred = run_size(hp, train_sp, len(held))
                    else:
                        raise ValueError(f"unknown method {m!r}")
                except Exception as e:  # a refusal (e.g. InputError) is a result, recorded
                    if type(e).__name__ not in ("InputError", "ValidationError"):
                        raise
                    msg = f"{type(e).__name__}: {e}"
                    refused[m] = msg  # same data, same refusal: not retried on later folds
                    info["error"] = msg
                    errors.append({"pair": pair.name, "method": m, "message": msg})
                    log(f"{pair.name} {m} refused: {msg}")
            dt = time.perf_counter() - t0
            if pred is None:
                r = np.full(len(held), np.nan)
            else:
                r = pearson_per_gene(np.nan_to_num(pred, nan=0.0), measured)
                r[np.isnan(pred).all(axis=0)] = np.nan
            for g, v in zip(held, r, strict=True):
                gene_rows.append(
                    {"pair": pair.name, "method": m, "fold": f, "gene": g, "pearson": v}
                )
            fold_rows.append(
                {
                    "pair": pair.name,
                    "method": m,
                    "fold": f,
                    "n_train": len(train),
                    "n_held": len(held),
                    "time_s": dt,
                    "loadavg_1m": load,
                    **{k: v for k, v in info.items() if k != "error"},
                    "error": info.get("error", ""),
                }
            )
            med = np.nanmedian(r) if np.isfinite(r).any() else float("nan")
            extra = ", ".join(f"{k} {v}" for k, v in info.items() if k != "error")
            log(
                f"{pair.name} fold {f + 1}/{len(groups)} {m}: median r {med:.3f}, {dt:.1f} s"
                f"{', ' + extra if extra else ''}, load {load}"
            )
    return gene_rows, fold_rows, errors


# --------------------------------------------------------------------------------------------
# tables


def merge(path: Path, new: pd.DataFrame, ran: set[tuple[str, str]]) -> pd.DataFrame:
    """The table at ``path`` without the (pair, method) rows of this run, plus ``new``."""
    if path.exists() and path.stat().st_size > 0:
        old = pd.read_csv(path, keep_default_na=True)
        if len(old):
            keep = ~pd.Series(list(zip(old["pair"], old["method"], strict=True))).isin(ran)
            old = old[keep.to_numpy()]
            new = pd.concat([old, new], ignore_index=True)
    return new


def _order(values: list[str], reference: list[str]) -> list[str]:
    known = [v for v in reference if v in values]
    return known + sorted(v for v in values if v not in known)


def summarize(genes: pd.DataFrame, folds: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(medians, wins)``: median r per pair x method (plus the genes scored and, for the
    default, which map it chose), and per pair ``wins/losses`` of ``default`` vs each method
    over genes both scored."""
    pairs = _order(list(pd.unique(genes["pair"])), DEFAULT_PAIRS)
    methods = _order(list(pd.unique(genes["method"])), list(METHODS))
    med = genes.groupby(["pair", "method"])["pearson"].median().unstack("method")
    med = med.reindex(index=pairs, columns=methods)
    n = genes.groupby("pair")["gene"].nunique().reindex(pairs)
    out = med.reset_index()
    out.insert(1, "n_genes", n.to_numpy())
    if {"ensemble", "tangram"} <= set(methods):
        out["tangram-ensemble"] = out["tangram"] - out["ensemble"]
    # which folds tangram ran on (fewer folds where --tangram-folds was used)
    if "tangram" in methods:
        tf = folds[folds["method"] == "tangram"].groupby("pair")["fold"].nunique()
        nf = folds.groupby("pair")["fold"].nunique()
        out["tangram_folds"] = [f"{tf.get(p, 0)}/{nf.get(p, 0)}" for p in pairs]
    if "default" in methods and "method" in folds.columns:
        d = folds[folds["method"] == "default"]
        chose = (
            d.groupby("pair")["method_chosen"].agg(
                lambda s: ", ".join(f"{k} {v}" for k, v in s.value_counts().items())
            )
            if "method_chosen" in d.columns
            else pd.Series(dtype=str)
        )
        out["default_chose"] = [chose.get(p, "") for p in pairs]
    wins_rows = []
    if "default" in methods:
        w = genes.pivot_table(
            index=["pair", "gene"], columns="method", values="pearson", dropna=False
        )
        for p in pairs:
            sub = w.loc[p] if p in w.index.get_level_values(0) else None
            row: dict[str, Any] = {"pair": p}
            for m in methods:
                if m == "default" or sub is None:
                    continue
                a, b = sub["default"].to_numpy(), sub[m].to_numpy()
                ok = np.isfinite(a) & np.isfinite(b)
                hi, lo = int((a[ok] > b[ok]).sum()), int((a[ok] < b[ok]).sum())
                row[f"default vs {m}"] = f"{hi}/{lo}/{int(ok.sum()) - hi - lo}" if ok.any() else ""
            wins_rows.append(row)
    return out, pd.DataFrame(wins_rows)


def markdown(summary: pd.DataFrame, wins: pd.DataFrame, errors: pd.DataFrame, meta: dict) -> str:
    lines = [
        "# Hard pairs: median held-out Pearson r per pair and method",
        "",
        f"{meta['folds']} gene folds (seed {meta['seed']}); written by `benchmarks/hard_pairs.py` "
        "(see its docstring for the pairs and methods). Empty cell: not run, or the method "
        "refused the pair (errors below).",
        "",
        common.md_table(summary, ".3f"),
    ]
    if len(wins):
        lines += [
            "",
            "Wins/losses/ties of `default` against each method (genes where default's r is "
            "higher / lower / equal, over genes both scored):",
            "",
            common.md_table(wins),
        ]
    if meta.get("runs"):
        lines += ["", "Runs (merged into these tables; details in meta.json):", ""]
        for r in meta["runs"]:
            a = r.get("args", {})
            lines.append(
                f"- {r.get('date_utc')}: methods {' '.join(a.get('methods', []))}; "
                f"{len(r.get('pairs', {}))} pairs; {r.get('wall_s', 0) / 60:.1f} min on "
                f"{r.get('logical_cpus')} CPUs ({r.get('cpu')}), load {r.get('loadavg_at_start')}; "
                f"commit {r.get('git_commit')}, {r.get('source')}"
            )
    if len(errors):
        lines += ["", "Refusals:", ""]
        for (p, m), g in errors.groupby(["pair", "method"], sort=False):
            lines.append(f"- {p}, {m}: `{g['message'].iloc[0]}`")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS), help="BASE or BASE:VARIANT")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS,
        choices=list(METHODS),
        help=f"default: {' '.join(DEFAULT_METHODS)} (add 'default' for the package default)",
    )
    p.add_argument(
        "--tangram-folds",
        type=int,
        default=0,
        help="run the Tangram map on the first N folds only (0: all); the summary says how many",
    )
    p.add_argument("--k", type=int, default=10, help="neighbours of the kNN baseline")
    p.add_argument("--spage-k", type=int, default=50, help="neighbours of SpaGE")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--out", type=Path, default=common.DOCS / "bench" / "hard_pairs")
    p.add_argument("--summary-only", action="store_true", help="rebuild the summary from the CSVs")
    return p.parse_args(argv)


def write_summary(out: Path, meta: dict) -> str:
    genes = pd.read_csv(out / "per_gene.csv")
    folds = pd.read_csv(out / "folds.csv")
    errp = out / "errors.csv"
    errors = pd.read_csv(errp) if errp.exists() and errp.stat().st_size > 1 else pd.DataFrame()
    summary, wins = summarize(genes, folds)
    common.write_csv(summary, out / "summary.csv")
    if len(wins):
        common.write_csv(wins, out / "wins.csv")
    md = markdown(summary, wins, errors, meta)
    (out / "summary.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    meta_path = args.out / "meta.json"
    meta: dict[str, Any] = {"folds": args.folds, "seed": args.seed, "runs": []}
    if meta_path.exists():
        import json

        meta = json.loads(meta_path.read_text())
        if not args.summary_only and (meta["folds"], meta["seed"]) != (args.folds, args.seed):
            sys.exit(
                f"{args.out} holds a run with --folds {meta['folds']} --seed {meta['seed']}; "
                "use the same folds or another --out"
            )
    if args.summary_only:
        print(write_summary(args.out, meta))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if "tangram" in args.methods or "default" in args.methods:
        common.quiet_tangram()
    info = common.machine_info()
    info["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    info["pairs"] = {}
    log(f"machine: {info['cpu']}, {info['logical_cpus']} CPUs, load {info['loadavg_at_start']}")
    t_all = time.perf_counter()
    all_genes, all_folds, all_err = [], [], []
    for spec in args.pairs:
        hp = build_pair(spec, args.seed)
        pr = hp.pair
        log(f"{spec}: reference {pr.reference.shape}, spatial {pr.spatial.shape}; {hp.note}")
        t0 = time.perf_counter()
        g, f, e = evaluate(hp, args)
        all_genes += g
        all_folds += f
        all_err += e
        fdf = pd.DataFrame(f)
        info["pairs"][spec] = {
            "note": hp.note,
            "n_ref": pr.reference.n_obs,
            "n_sp": pr.spatial.n_obs,
            "wall_s": round(time.perf_counter() - t0, 1),
            "method_time_s": {
                m: round(float(t), 1) for m, t in fdf.groupby("method")["time_s"].sum().items()
            },
        }
        # write after every pair (a long run keeps what it did)
        ran = {(p, m) for p in args.pairs[: args.pairs.index(spec) + 1] for m in args.methods}
        gdf = merge(args.out / "per_gene.csv", pd.DataFrame(all_genes), ran)
        fd = merge(args.out / "folds.csv", pd.DataFrame(all_folds), ran)
        common.write_csv(gdf.sort_values(KEY[:3], kind="stable"), args.out / "per_gene.csv")
        common.write_csv(fd, args.out / "folds.csv")
        edf = merge(
            args.out / "errors.csv",
            pd.DataFrame(all_err, columns=["pair", "method", "message"]),
            ran,
        )
        common.write_csv(edf, args.out / "errors.csv")
    info["wall_s"] = round(time.perf_counter() - t_all, 1)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["runs"].append(info)
    common.write_json(meta, meta_path)
    print(write_summary(args.out, meta), flush=True)
    log(f"done in {info['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
