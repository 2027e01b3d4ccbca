"""Fast defaults (issue 14): when the Tangram map stops, which engine ``auto`` picks, and what the
default ``evaluate`` and ``map`` cost before and after.

Four measurements, one subcommand each; tables go to ``--out-dir`` (default ``docs/bench``):

``plateau``
    The Tangram map (``method="tangram"``, ``tol=0``: every epoch) for ``--epochs`` on each pair,
    its training score after every epoch and the time since training started
    (``fast_defaults_trajectories.csv``); then, for a grid of ``tol`` x ``patience``, where the
    plateau rule (gain under ``tol`` over the last ``patience`` epochs) would have stopped, the
    score there, the score after all epochs and the training time saved
    (``fast_defaults_plateau.csv``). With ``--cv-pair``, a 10-fold cross-validation of the
    Tangram map on that pair with the default plateau and with every epoch: held-out Pearson and
    time (``fast_defaults_plateau_cv.csv``).
``engines``
    The exact and lean engines and ``auto`` for ``--epochs`` epochs each (``tol=0``) on each
    pair: seconds per epoch, final score, the engine ``auto`` ran and its note
    (``fast_defaults_engines.csv``).
``evaluate``
    ``napari-spatial-impute evaluate`` (10 folds) on the MERFISH pair, each ``--variant`` of its
    options run before (``PYTHONPATH=--before``, a checkout of the earlier commit) and after
    (this checkout), interleaved over ``--repeats`` rounds, each a fresh process timed from start
    to exit; and the same cross-validation timed inside one process (imports and reading
    excluded). The per-gene tables of before and after are compared
    (``fast_defaults_evaluate.csv``).
``accuracy``
    The default map's held-out Pearson (10 folds, seed 0, the accuracy protocol's normalised
    pairs) beside the committed ``accuracy_summary.csv`` (``fast_defaults_accuracy.csv``).
``map``
    ``/usr/bin/time -v napari-spatial-impute map --cluster-key cell_type`` on the seed-shaped
    pair (``seed_shape.py``), before and after: wall time, peak RSS, the mapping's own timings
    (``fast_defaults_map.csv``).

Pairs: ``merfish_hypothalamus``, ``starmap_mpfc``, ``osmfish_sscortex`` (``common.load_pair``,
normalised), ``merfish_mop_halves`` (the MOp MERFISH cells, normalised, in two seeded random
halves: 3,962 reference x 3,962 spatial cells, 254 genes), ``seed`` (the seed's shape from
``seed_shape.make_pair``) and ``sim:NREFxNSPxGENES`` (``common.simulate_pair``, seed 0)::

    python benchmarks/fast_defaults.py plateau --pairs merfish_hypothalamus merfish_mop_halves seed
    python benchmarks/fast_defaults.py engines --pairs merfish_mop_halves --epochs 200
    python benchmarks/fast_defaults.py evaluate --before /tmp/base/src --repeats 3
    python benchmarks/fast_defaults.py map --before /tmp/base/src --pair-dir /tmp/seed_shape
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402 (benchmarks/ is on the path from here)

#: The plateau grid: tol (training-score gain) x patience (epochs).
TOLS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3)
PATIENCES = (25, 50, 100)
SRC = HERE.parent / "src"
#: GNU time's verbose report (wall time, peak RSS) where installed.
TIME_V = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []


# ----------------------------------------------------------------------------------- pairs
def load(name: str) -> tuple[Any, Any]:
    """``(reference, spatial)`` of one named pair (see the module docstring)."""
    import anndata as ad

    if name.startswith("sim:"):
        n_ref, n_sp, n_genes = (int(v) for v in name[4:].split("x"))
        return common.simulate_pair(n_ref, n_sp, n_genes, seed=0)
    if name == "seed":
        import seed_shape

        return seed_shape.make_pair()
    if name == "merfish_mop_halves":
        root = common.data_dir()
        if root is None:
            raise FileNotFoundError("shared data folder not found (set NSI_DATA_DIR)")
        a = common.normalize_log1p(ad.read_h5ad(root / "merfish_mop" / "spatial.h5ad"))
        order = np.random.default_rng(0).permutation(a.n_obs)
        half = a.n_obs // 2
        ref = ad.AnnData(X=a.X[order[:half]], var=pd.DataFrame(index=a.var_names.copy()))
        ref.obs_names = a.obs_names[order[:half]]
        spa = a[np.sort(order[half : 2 * half])].copy()
        return ref, spa
    pair = common.load_pair(name)
    return pair.reference, pair.spatial


# --------------------------------------------------------------------------------- plateau
def stop_epoch(scores: np.ndarray, tol: float, patience: int) -> int:
    """The epoch (1-based) at which the plateau rule stops, or ``len(scores)``."""
    gain = scores[patience:] - scores[:-patience]
    hit = np.flatnonzero(gain < tol)
    return int(hit[0] + patience + 1) if hit.size else len(scores)


def plateau_grid(traj: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (pair, engine), df in traj.groupby(["pair", "engine"], sort=False):
        scores = df["score"].to_numpy()
        elapsed = df["elapsed_s"].to_numpy()
        first, last = scores[0], scores[-1]
        for tol in TOLS:
            for patience in PATIENCES:
                if patience >= len(scores):
                    continue
                e = stop_epoch(scores, tol, patience)
                rows.append(
                    {
                        "pair": pair,
                        "engine": engine,
                        "tol": tol,
                        "patience": patience,
                        "stop_epoch": e,
                        "score_at_stop": scores[e - 1],
                        "score_all_epochs": last,
                        "gap_to_all_epochs": last - scores[e - 1],
                        "share_of_gain": (scores[e - 1] - first) / (last - first)
                        if last > first
                        else 1.0,
                        "train_s_to_stop": elapsed[e - 1],
                        "train_s_all_epochs": elapsed[-1],
                    }
                )
    return pd.DataFrame(rows)


def cmd_plateau(args: argparse.Namespace) -> int:
    import napari_spatial_impute as nsi

    rows = []
    for name in args.pairs:
        ref, spa = load(name)
        seen: list[tuple[int, float, float]] = []

        def cb(info: Any, seen: list[tuple[int, float, float]] = seen) -> None:
            seen.append((info.epoch, info.score, time.perf_counter()))

        t = time.perf_counter()
        r = nsi.map_cells_to_space(
            ref,
            spa,
            method="tangram",
            engine=args.engine,
            epochs=args.epochs,
            tol=0,
            seed=0,
            callback=cb,
        )
        start = t + r.timings["validate_and_prepare_s"] + r.timings["setup_s"]  # training began
        common.log(
            f"{name}: {r.params['engine']} engine, score {seen[0][1]:.4f} -> {seen[-1][1]:.4f} "
            f"in {args.epochs} epochs ({time.perf_counter() - t:.1f} s; {r.params['engine_note']})"
        )
        rows += [
            {
                "pair": name,
                "engine": r.params["engine"],
                "epoch": e,
                "score": s,
                "elapsed_s": at - start,
            }
            for e, s, at in seen
        ]
    traj = pd.DataFrame(rows)
    common.write_csv(traj, _out(args, "trajectories"))
    grid = plateau_grid(traj)
    common.write_csv(grid, _out(args, "plateau"))
    print(common.md_table(grid))
    if args.cv_pair:
        cv_rows = []
        ref, spa = load(args.cv_pair)
        runs = [("default plateau", None), ("every epoch", 0.0)]
        runs += [(f"tol {tol:g}", tol) for tol in args.cv_tols]
        for label, tol in runs:
            kw: dict[str, Any] = {} if tol is None else {"tol": tol}
            t = time.perf_counter()
            df = nsi.cross_validate(
                ref,
                spa,
                folds=10,
                seed=0,
                method="tangram",
                epochs=args.epochs,
                engine=args.engine,
                **kw,
            )
            cv_rows.append(
                {
                    "pair": args.cv_pair,
                    "run": label,
                    "engine": args.engine,
                    "median_pearson": float(np.nanmedian(df["pearson"])),
                    "cv_s": time.perf_counter() - t,
                    "loadavg_1m": common.loadavg(),
                }
            )
            common.log(f"cv {label}: {cv_rows[-1]}")
        common.write_csv(pd.DataFrame(cv_rows), _out(args, "plateau_cv"))
    _meta(args, "plateau")
    return 0


# --------------------------------------------------------------------------------- engines
def cmd_engines(args: argparse.Namespace) -> int:
    import napari_spatial_impute as nsi

    # warm-up: the exact engine's kernel is compiled on its first call in a process
    warm_ref, warm_sp = common.simulate_pair(100, 120, 20, seed=0)
    for engine in ("exact", "lean"):
        nsi.map_cells_to_space(warm_ref, warm_sp, method="tangram", engine=engine, epochs=2)
    rows = []
    for name in args.pairs:
        ref, spa = load(name)
        for rep in range(args.repeats):
            for engine in args.engines:
                load_before = common.loadavg()
                r = nsi.map_cells_to_space(
                    ref, spa, method="tangram", engine=engine, epochs=args.epochs, tol=0, seed=0
                )
                t = r.timings
                rows.append(
                    {
                        "pair": name,
                        "n_ref": ref.n_obs,
                        "n_sp": spa.n_obs,
                        "repeat": rep,
                        "engine_asked": engine,
                        "engine_ran": r.params["engine"],
                        "epochs": r.params["epochs_done"],
                        "setup_s": t["setup_s"],
                        "train_s": t["train_s"],
                        "s_per_epoch": t["train_s"] / max(r.params["epochs_done"], 1),
                        "setup_plus_train_s": t["setup_s"] + t["train_s"],
                        "final_score": r.training_score,
                        "engine_note": r.params["engine_note"],
                        "loadavg_1m": load_before,
                    }
                )
                common.log(
                    f"{name} {engine} -> {r.params['engine']}: {rows[-1]['s_per_epoch'] * 1e3:.1f} "
                    f"ms/epoch, setup {t['setup_s']:.2f} s, score {r.training_score:.4f} "
                    f"{r.params['engine_note']}"
                )
    df = pd.DataFrame(rows)
    common.write_csv(df, _out(args, "engines"))
    print(common.md_table(df.drop(columns=["engine_note"])))
    _meta(args, "engines")
    return 0


# -------------------------------------------------------------------------------- evaluate
def cv_worker(reference: str, spatial: str, out: str, extra: str) -> None:
    """One in-process cross-validation (imports and reading excluded from ``cv_s``)."""
    import anndata as ad

    from napari_spatial_impute.core.evaluate import cross_validate

    ref, spa = ad.read_h5ad(reference), ad.read_h5ad(spatial)
    kw: dict[str, Any] = {}
    words = extra.split()
    if "--transform" in words:
        kw["transform"] = words[words.index("--transform") + 1]
    if "--no-uncertainty" in words:
        kw["uncertainty"] = False
    elif "--uncertainty" in words:
        kw["uncertainty"] = True
    else:
        # the command line's default, as the checkout's parser sets it
        from napari_spatial_impute.cli import _parser

        ns = _parser().parse_args(["evaluate", "-r", "r", "-s", "s", "-o", "o.csv"])
        kw["uncertainty"] = bool(ns.uncertainty)
    t = time.perf_counter()
    df = cross_validate(ref, spa, folds=10, seed=0, **kw)
    cv_s = time.perf_counter() - t
    df.to_csv(out, index=False)
    print(json.dumps({"cv_s": cv_s}))


def _env(src: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": src}


def _compare(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Largest difference of the per-gene scores of two tables (inf when genes or NaNs differ)."""
    cols = [c for c in ("pearson", "cosine", "spearman") if c in a.columns and c in b.columns]
    if list(a["gene"]) != list(b["gene"]) or list(a["fold"]) != list(b["fold"]):
        return float("inf")
    x, y = a[cols].to_numpy(dtype=np.float64), b[cols].to_numpy(dtype=np.float64)
    if not np.array_equal(np.isnan(x), np.isnan(y)):
        return float("inf")
    return float(np.nanmax(np.abs(x - y))) if x.size else 0.0


def cmd_evaluate(args: argparse.Namespace) -> int:
    root = common.data_dir()
    if args.reference is None and root is None:
        print("shared data folder not found: nothing measured", file=sys.stderr)
        return 1
    reference = args.reference or str(root / "merfish_hypothalamus" / "reference.h5ad")
    spatial = args.spatial or str(root / "merfish_hypothalamus" / "spatial.h5ad")
    sides = {"after": str(SRC)} | ({"before": args.before} if args.before else {})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tables: dict[tuple[str, str, str], pd.DataFrame] = {}
        for rep in range(args.repeats):
            order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
            for variant in args.variants:
                for side in order:
                    for how in ("cli", "in_process"):
                        out = os.path.join(tmp, f"{side}_{how}.csv")
                        if how == "cli":
                            cmd = [sys.executable, "-m", "napari_spatial_impute.cli", "evaluate"]
                            cmd += ["-r", reference, "-s", spatial, "--folds", "10", "-o", out]
                            cmd += variant.split()
                        else:
                            cmd = [sys.executable, str(Path(__file__).resolve()), "cvworker"]
                            cmd += [reference, spatial, out, variant]
                        load = common.loadavg()
                        t0 = time.perf_counter()
                        proc = subprocess.run(
                            cmd, capture_output=True, text=True, env=_env(sides[side]), check=False
                        )
                        wall = time.perf_counter() - t0
                        if proc.returncode != 0:
                            raise SystemExit(
                                f"{side} {how} {variant!r} failed: {proc.stderr[-800:]}"
                            )
                        row = {
                            "variant": variant or "(defaults)",
                            "side": side,
                            "how": how,
                            "repeat": rep,
                            "seconds": wall
                            if how == "cli"
                            else json.loads(proc.stdout.strip().splitlines()[-1])["cv_s"],
                            "loadavg_1m": load,
                        }
                        df = pd.read_csv(out)
                        row["median_pearson"] = float(np.nanmedian(df["pearson"]))
                        row["has_intervals"] = "coverage_90" in df.columns
                        tables[(variant, side, how)] = df
                        rows.append(row)
                        common.log(f"{row}")
        result = pd.DataFrame(rows)
        diffs = []
        for variant in args.variants:
            if (variant, "before", "cli") in tables:
                diffs.append(
                    {
                        "variant": variant or "(defaults)",
                        "max_abs_diff_per_gene_scores": _compare(
                            tables[(variant, "before", "cli")], tables[(variant, "after", "cli")]
                        ),
                    }
                )
    summary = result.groupby(["variant", "how", "side"], sort=False).agg(
        median_s=("seconds", "median"),
        min_s=("seconds", "min"),
        max_s=("seconds", "max"),
        median_pearson=("median_pearson", "first"),
        intervals=("has_intervals", "first"),
        load_min=("loadavg_1m", "min"),
        load_max=("loadavg_1m", "max"),
    )
    common.write_csv(result, _out(args, "evaluate"))
    print(summary.to_string())
    if diffs:
        print(pd.DataFrame(diffs).to_string(index=False))
        common.write_csv(pd.DataFrame(diffs), _out(args, "evaluate_diff"))
    _meta(args, "evaluate")
    return 0


# -------------------------------------------------------------------------------- accuracy
def cmd_accuracy(args: argparse.Namespace) -> int:
    """The default map's held-out accuracy on the accuracy protocol, beside the committed table."""
    import napari_spatial_impute as nsi

    docs = pd.read_csv(common.BENCH_OUT / "accuracy_summary.csv")
    rows = []
    for name in args.pairs:
        ref, spa = load(name)
        t = time.perf_counter()
        df = nsi.cross_validate(ref, spa, folds=10, seed=0)
        was = docs[(docs["dataset"] == name) & (docs["method"] == "ours")]["median_r"]
        rows.append(
            {
                "pair": name,
                "median_r": float(np.nanmedian(df["pearson"])),
                "n_nan": int(df["pearson"].isna().sum()),
                "docs_median_r": float(was.iloc[0]) if len(was) else float("nan"),
                "cv_s": time.perf_counter() - t,
                "loadavg_1m": common.loadavg(),
            }
        )
        common.log(f"{rows[-1]}")
    out = pd.DataFrame(rows)
    common.write_csv(out, _out(args, "accuracy"))
    print(out.to_string(index=False))
    _meta(args, "accuracy")
    return 0


# ------------------------------------------------------------------------------------- map
def _time_v(text: str) -> dict[str, float]:
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    secs = float("nan")
    if wall:
        parts = [float(p) for p in wall.group(1).split(":")]
        secs = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return {
        "wall_s": secs,
        "peak_rss_gib": int(rss.group(1)) / 1024**2 if rss else float("nan"),
    }


def cmd_map(args: argparse.Namespace) -> int:
    folder = Path(args.pair_dir) if args.pair_dir else None
    with tempfile.TemporaryDirectory() as tmp:
        if folder is None or not (folder / "spatial.h5ad").exists():
            import seed_shape

            folder = folder or Path(tmp) / "pair"
            seed_shape.main(["--out", str(folder), *shlex.split(args.shape)])
        sides = {"after": str(SRC)} | ({"before": args.before} if args.before else {})
        rows = []
        for rep in range(args.repeats):
            order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
            for side in order:
                out = Path(tmp) / f"{side}.h5ad"
                cmd = [*TIME_V, sys.executable, "-m", "napari_spatial_impute.cli"]
                cmd += ["map", "-r", str(folder / "reference.h5ad")]
                cmd += ["-s", str(folder / "spatial.h5ad"), "-o", str(out)]
                cmd += ["--cluster-key", "cell_type", *shlex.split(args.map_args)]
                load = common.loadavg()
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, env=_env(sides[side]), check=False
                )
                if proc.returncode != 0:
                    own = proc.stderr.split("\tCommand being timed")[0].strip()
                    raise SystemExit(f"{side} failed: {own[-800:]}")
                summary = [ln for ln in proc.stdout.splitlines() if " map" in ln]
                row = {
                    "side": side,
                    "repeat": rep,
                    **_time_v(proc.stderr),
                    "loadavg_1m": load,
                    "summary": summary[0] if summary else "",
                }
                import anndata as ad

                uns = ad.read_h5ad(out, backed="r").uns["spatial_impute"]
                row.update({f"t_{k}": float(v) for k, v in uns["timings"].items()})
                rows.append(row)
                common.log(f"{row}")
                out.unlink()
    df = pd.DataFrame(rows)
    common.write_csv(df, _out(args, "map"))
    print(df.drop(columns=["summary"]).to_string(index=False))
    _meta(args, "map")
    return 0


# ------------------------------------------------------------------------------------ main
def _out(args: argparse.Namespace, name: str, ext: str = ".csv") -> Path:
    """``<out-dir>/fast_defaults_<name>[_<tag>]<ext>``."""
    tag = f"_{args.tag}" if args.tag else ""
    return Path(args.out_dir) / f"fast_defaults_{name}{tag}{ext}"


def _meta(args: argparse.Namespace, what: str) -> None:
    meta = {**common.machine_info(), "args": vars(args) | {"func": what}}
    meta["args"].pop("run", None)
    common.write_json(meta, _out(args, f"{what}_meta", ".json"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "cvworker":
        cv_worker(*argv[1:5])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=str(common.BENCH_OUT))
    p.add_argument("--tag", default="", help="suffix of the output files' names")
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("plateau")
    a.add_argument("--pairs", nargs="+", default=["merfish_hypothalamus"])
    a.add_argument("--epochs", type=int, default=1000)
    a.add_argument("--engine", default="auto")
    a.add_argument("--cv-pair", default=None)
    a.add_argument(
        "--cv-tols", nargs="*", type=float, default=[], help="more tols to cross-validate"
    )
    a.set_defaults(run=cmd_plateau)
    e = sub.add_parser("engines")
    e.add_argument("--pairs", nargs="+", default=["merfish_mop_halves"])
    e.add_argument("--engines", nargs="+", default=["exact", "lean", "auto"])
    e.add_argument("--epochs", type=int, default=200)
    e.add_argument("--repeats", type=int, default=1)
    e.set_defaults(run=cmd_engines)
    v = sub.add_parser("evaluate")
    v.add_argument("--before", default=None, help="src folder of the earlier checkout")
    v.add_argument("--reference", default=None)
    v.add_argument("--spatial", default=None)
    v.add_argument(
        "--variants",
        nargs="+",
        default=["", "--transform normalize_log1p"],
        help="extra evaluate options, one string per variant ('' = defaults; write "
        "--variants='--no-uncertainty' for one that starts with --)",
    )
    v.add_argument("--repeats", type=int, default=3)
    v.set_defaults(run=cmd_evaluate)
    c = sub.add_parser("accuracy")
    c.add_argument(
        "--pairs", nargs="+", default=["merfish_hypothalamus", "starmap_mpfc", "osmfish_sscortex"]
    )
    c.set_defaults(run=cmd_accuracy)
    m = sub.add_parser("map")
    m.add_argument("--before", default=None, help="src folder of the earlier checkout")
    m.add_argument("--pair-dir", default=None, help="a seed_shape.py folder (made if absent)")
    m.add_argument("--shape", default="", help="seed_shape.py options, one string")
    m.add_argument("--map-args", default="", help="more map options, one string")
    m.add_argument("--repeats", type=int, default=1)
    m.set_defaults(run=cmd_map)
    args = p.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
