"""Speed and memory: this project's mapping engine vs tangram-sc 1.0.4 on simulated data.

For each size ``N_REFxN_SPxN_GENES[:EPOCHS]`` a seeded reference/spatial pair of raw counts is
simulated once (``common.simulate_pair``) and written to a temporary folder. Then, interleaved
(ours, tangram, ours, tangram, ...) for ``--repeats`` rounds, each method maps it in a fresh
subprocess (``speed.py worker``) with the same objective: cells mode, gene-wise cosine,
uniform density prior with ``lambda_d = 1`` (tangram-sc's cells mode defaults ``lambda_d`` to
0, which would make the prior inert; it is set to 1 here so both optimise the same function),
Adam with learning rate 0.1, float32, CPU, torch's default threads.

Recorded per run: whole-process wall time and peak resident memory (``ru_maxrss`` of the
worker, cross-checked by psutil sampling from the parent), set-up time (everything before the
first epoch, data loading excluded), time per epoch (median over epochs), final training score
(mean cosine of the training genes at the final mapping), the score history, and for ours the
time to reach tangram-sc's final training score of the same round. Sizes whose estimated
memory exceeds the available RAM are not run; their estimate is recorded instead.

Also, once per invocation: an exactness check (same initial logits, tangram-sc's
``Mapper._loss_fn`` and autograd vs this project's ``DenseObjective``: loss, terms and
gradient at the same M, then the per-epoch loss of ``--parity-epochs`` epochs of both
optimisers), and this machine's float32 matmul throughput, from which the physical floor per
epoch is ``2 matmuls x 2 x n_ref x n_sp x n_genes`` FLOPs divided by that throughput.

Usage::

    python benchmarks/speed.py --sizes 2000x6000x130:1000 9448x40864x132:15 20000x200000x300:10 \
        --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import log

GIB = 1024**3
# tangram-sc's resident memory per mapping element (n_ref x n_sp), used only to decide whether a
# size can run and, when it cannot, as the estimate; replaced by a fit of the measured peaks
# when two or more sizes ran. Derivation: float64 initial M from numpy (8 B, freed), M, its
# gradient, Adam's two moments (16 B), softmax P, log P, P log P and backward temporaries
# (about 12-16 B) -> about 30 B per element, consistent with 11.6 GB at 9,448 x 40,864.
TANGRAM_BYTES_PER_ELEMENT = 30.0


# --------------------------------------------------------------------------------------------
# worker: one mapping in this (fresh) process; prints one JSON line


def _worker(argv: list[str]) -> None:
    t_proc = time.perf_counter()
    p = argparse.ArgumentParser()
    p.add_argument("--method", required=True)
    p.add_argument("--engine", default=None)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    import anndata as ad

    if a.method == "tangram":
        common.quiet_tangram()
        import tangram  # noqa: F401  (import time counts like ours)
    else:
        import napari_spatial_impute  # noqa: F401
    t_imp = time.perf_counter()
    ref = ad.read_h5ad(a.data / "reference.h5ad")
    spa = ad.read_h5ad(a.data / "spatial.h5ad")
    t_load = time.perf_counter()
    out: dict[str, Any] = {"method": a.method if a.engine is None else f"ours[{a.engine}]"}
    if a.method == "tangram":
        out.update(_run_tangram(ref, spa, a.epochs, a.seed))
    else:
        out.update(_run_ours(ref, spa, a.epochs, a.seed, a.engine))
    out["import_s"] = t_imp - t_proc
    out["package_source_sha1"] = _package_hash()
    out["load_s"] = t_load - t_imp
    out["peak_rss_bytes"] = common.peak_rss_bytes()
    print(json.dumps(out), flush=True)


def _package_hash() -> str:
    """SHA-1 of the imported napari_spatial_impute sources (detects edits between runs)."""
    import hashlib

    import napari_spatial_impute

    h = hashlib.sha1()
    for f in sorted(Path(napari_spatial_impute.__file__).parent.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _run_ours(ref, spa, epochs: int, seed: int, engine: str | None) -> dict[str, Any]:
    from napari_spatial_impute import map_cells_to_space

    stamps: list[float] = []
    kw: dict[str, Any] = {} if engine is None else {"engine": engine}
    t0 = time.perf_counter()
    res = map_cells_to_space(
        ref,
        spa,
        method="tangram",  # the Tangram map's speed (the default ensemble map trains nothing)
        epochs=epochs,
        seed=seed,
        density="uniform",
        transform="none",
        callback=lambda info: stamps.append(time.perf_counter()),
        **kw,
    )
    t1 = time.perf_counter()
    tm = res.timings
    setup = tm.get("validate_and_prepare_s", 0.0) + tm.get("setup_s", 0.0)
    train_start = t0 + setup
    ends = np.asarray(stamps) - train_start
    per_epoch = np.diff(np.concatenate([[0.0], ends])) if len(ends) else np.array([])
    hist = np.asarray(res.history.get("main_loss", []), dtype=float)
    return {
        "setup_s": setup,
        "train_s": tm.get("train_s", float("nan")),
        "post_s": t1 - t0 - setup - tm.get("train_s", 0.0),
        "map_s": t1 - t0,
        "epoch_s_median": float(np.median(per_epoch)) if len(per_epoch) else float("nan"),
        "epoch_s_mean": tm.get("train_s", float("nan")) / max(epochs, 1),
        "epoch_end_s": ends.tolist(),
        "score_history": hist.tolist(),
        "final_score": res.training_score,
        "n_ref": ref.n_obs,
        "n_sp": spa.n_obs,
        "n_genes": len(res.genes.training_reference),
    }


def _run_tangram(ref, spa, epochs: int, seed: int) -> dict[str, Any]:
    import tangram as tg
    from tangram import mapping_optimizer as mo

    marks: dict[str, Any] = {"loss_calls": []}
    orig_loss, orig_train = mo.Mapper._loss_fn, mo.Mapper.train

    def loss_fn(self, verbose=True):
        marks["loss_calls"].append(time.perf_counter())
        return orig_loss(self, verbose)

    def train(self, *args, **kwargs):
        marks["train_start"] = time.perf_counter()
        out = orig_train(self, *args, **kwargs)
        marks["train_end"] = time.perf_counter()
        return out

    mo.Mapper._loss_fn, mo.Mapper.train = loss_fn, train
    t0 = time.perf_counter()
    tg.pp_adatas(ref, spa, genes=None)
    t_pp = time.perf_counter()
    adm = tg.map_cells_to_space(
        ref,
        spa,
        mode="cells",
        num_epochs=epochs,
        density_prior="uniform",
        lambda_d=1,
        device="cpu",
        random_state=seed + 1,
        verbose=False,
    )
    t1 = time.perf_counter()
    setup = marks["train_start"] - t0
    train_s = marks["train_end"] - marks["train_start"]
    starts = np.asarray(marks["loss_calls"]) - marks["train_start"]
    ends = np.concatenate([starts[1:], [train_s]]) if len(starts) else np.array([])
    per_epoch = np.diff(np.concatenate([[0.0], ends])) if len(ends) else np.array([])
    hist = [float(v) for v in adm.uns["training_history"]["main_loss"]]
    return {
        "setup_s": setup,
        "pp_adatas_s": t_pp - t0,
        "train_s": train_s,
        "post_s": t1 - marks["train_end"],
        "map_s": t1 - t0,
        "epoch_s_median": float(np.median(per_epoch)) if len(per_epoch) else float("nan"),
        "epoch_s_mean": train_s / max(epochs, 1),
        "epoch_end_s": ends.tolist(),
        "score_history": hist,
        "final_score": float(
            np.nanmean(adm.uns["train_genes_df"]["train_score"].to_numpy(dtype=float))
        ),
        "n_ref": ref.n_obs,
        "n_sp": spa.n_obs,
        "n_genes": len(ref.uns["training_genes"]),
    }


# --------------------------------------------------------------------------------------------
# exactness: same M, same loss


def parity(n_ref: int, n_sp: int, n_genes: int, epochs: int, seed: int) -> dict[str, Any]:
    """Compare this project's DenseObjective with tangram-sc's Mapper at the same logits."""
    import torch
    from tangram import mapping_optimizer as mo

    from napari_spatial_impute.core.engine.mapper import TangramMapper
    from napari_spatial_impute.core.engine.objective import DenseObjective, Weights

    common.quiet_tangram()
    ref, spa = common.simulate_pair(n_ref, n_sp, n_genes, seed=seed)
    S = ref.X.toarray().astype(np.float32)
    G = spa.X.toarray().astype(np.float32)
    keep = (S.sum(0) > 0) & (G.sum(0) > 0)
    S, G = np.ascontiguousarray(S[:, keep]), np.ascontiguousarray(G[:, keep])
    d = np.full(n_sp, 1.0 / n_sp, dtype=np.float32)
    tm = mo.Mapper(
        S=S,
        G=G,
        d=d,
        lambda_d=1,
        lambda_g1=1,
        lambda_g2=0,
        lambda_r=0,
        device="cpu",
        random_state=seed + 1,
    )
    M0 = tm.M.detach().clone()
    # 1) value, terms and gradient at M0
    loss = tm._loss_fn(verbose=False)
    tm.M.grad = None
    loss[0].backward()
    g_tg = tm.M.grad.detach().clone()
    w = Weights(lambda_d=1.0)
    obj = DenseObjective(torch.from_numpy(S), torch.from_numpy(G), w, d=torch.from_numpy(d))
    terms = obj.terms(M0)
    g_ours = torch.empty_like(M0)

    def grab(rows, grad):
        g_ours[rows] = grad

    obj.value_and_update(M0.clone(), grab)
    at_m0 = {
        "total_loss": (float(loss[0]), terms["total_loss"]),
        "main_loss": (float(loss[1]), terms["main_loss"]),
        "kl_reg": (float(loss[3]), terms["kl_reg"]),
        "entropy_reg": (float(loss[4]), terms["entropy_reg"]),
    }
    grad_rel = float((g_ours - g_tg).abs().max() / g_tg.abs().max())
    # 2) per-epoch loss of both optimisers from M0
    tm.M = M0.clone().requires_grad_(True)
    rec: dict[str, list[float]] = {"total_loss": [], "main_loss": []}
    orig = tm._loss_fn

    def recording_loss(verbose=True):
        out = orig(verbose)
        rec["total_loss"].append(float(out[0]))
        rec["main_loss"].append(float(out[1]))
        return out

    tm._loss_fn = recording_loss
    tm.train(num_epochs=epochs, learning_rate=0.1, print_each=None)
    hist_tg = rec
    P_tg = torch.softmax(tm.M.detach(), 1)
    ours = TangramMapper(S, G, w, d=d, learning_rate=0.1, init=M0.numpy())
    for _ in ours.iterate(epochs):
        pass
    P_ours = torch.from_numpy(ours.probabilities())
    tl_tg = np.array([float(v) for v in hist_tg["total_loss"]])
    tl_ours = np.array(ours.history["total_loss"])
    ml_tg = np.array([float(v) for v in hist_tg["main_loss"]])
    ml_ours = np.array(ours.history["main_loss"])
    return {
        "size": f"{n_ref}x{n_sp}x{int(keep.sum())}",
        "epochs": epochs,
        "at_M0": {
            k: {"tangram": a, "ours": b, "abs_diff": abs(a - b)} for k, (a, b) in at_m0.items()
        },
        "grad_max_abs_diff_rel_to_max": grad_rel,
        "per_epoch_total_loss_max_abs_diff": float(np.max(np.abs(tl_tg - tl_ours))),
        "per_epoch_main_loss_max_abs_diff": float(np.max(np.abs(ml_tg - ml_ours))),
        "final_P_max_abs_diff": float((P_tg - P_ours).abs().max()),
        "final_P_max": float(P_tg.max()),
        "tangram_total_loss_first_last": [tl_tg[0], tl_tg[-1]],
        "ours_total_loss_first_last": [tl_ours[0], tl_ours[-1]],
        "float32_eps": float(np.finfo(np.float32).eps),
    }


# --------------------------------------------------------------------------------------------
# driver


def parse_size(s: str, default_epochs: int, default_repeats: int) -> tuple[int, int, int, int, int]:
    """``N_REFxN_SPxN_GENES[:EPOCHS[:REPEATS]]``."""
    dims, *rest = s.split(":")
    n_ref, n_sp, n_genes = (int(x) for x in dims.lower().split("x"))
    ep = int(rest[0]) if rest and rest[0] else default_epochs
    rep = int(rest[1]) if len(rest) > 1 and rest[1] else default_repeats
    return n_ref, n_sp, n_genes, ep, rep


def mem_available() -> int:
    import torch

    from napari_spatial_impute.core.engine.resources import available_bytes

    return available_bytes(torch.device("cpu"))


def ours_estimate(n_ref: int, n_sp: int, n_genes: int) -> int:
    from napari_spatial_impute.core.engine.resources import estimate_dense_mapping

    return int(estimate_dense_mapping(n_ref, n_sp, n_genes).total_bytes)


def tangram_estimate(
    n_ref: int, n_sp: int, n_genes: int, per_element: float = TANGRAM_BYTES_PER_ELEMENT
) -> int:
    return int(per_element * n_ref * n_sp + 3 * 4 * (n_ref + n_sp) * n_genes + 0.6 * GIB)


def floor_seconds(n_ref: int, n_sp: int, n_genes: int, gflops: float) -> float:
    return 2 * 2 * n_ref * n_sp * n_genes / (gflops * 1e9)


SCORE_TOL = 1e-3  # "reached tangram-sc's final score" means within this much of it


def time_to_reach(run: dict[str, Any], target: float) -> tuple[float, int]:
    """Seconds from the start of the map call, and epochs, until the score reaches ``target``.

    ``score_history[e]`` is the score before update ``e``; it is reached when epoch ``e``'s
    evaluation is done, approximated by the end of epoch ``e``.
    """
    h = np.asarray(run.get("score_history", []), dtype=float)
    ends = np.asarray(run.get("epoch_end_s", []), dtype=float)
    hit = np.nonzero(h >= target - SCORE_TOL)[0]
    if not len(hit) or not np.isfinite(target):
        return float("nan"), -1
    e = int(hit[0])
    return float(run["setup_s"] + ends[e]), e + 1


def run_size(
    spec: tuple[int, int, int, int, int],
    args: argparse.Namespace,
    methods: list[tuple[str, str | None]],
    tmp: Path,
) -> list[dict[str, Any]]:
    n_ref, n_sp, n_genes, epochs, repeats = spec
    label = f"{n_ref}x{n_sp}x{n_genes}"
    avail = mem_available()
    est = {
        "ours": ours_estimate(n_ref, n_sp, n_genes),
        "tangram": tangram_estimate(n_ref, n_sp, n_genes),
    }
    runnable = {m: not (m == "tangram" and est["tangram"] > 0.85 * avail) for m, _ in methods}
    if not any(runnable.values()):
        pass
    rows: list[dict[str, Any]] = []
    data = tmp / label
    if any(runnable.values()):
        log(f"{label}: simulating")
        t = time.perf_counter()
        ref, spa = common.simulate_pair(n_ref, n_sp, n_genes, seed=args.seed)
        data.mkdir(parents=True, exist_ok=True)
        ref.write_h5ad(data / "reference.h5ad")
        spa.write_h5ad(data / "spatial.h5ad")
        spars = (common.sparsity(ref), common.sparsity(spa))
        del ref, spa
        log(
            f"{label}: simulated in {time.perf_counter() - t:.1f} s; zeros ref {spars[0]:.2f}, sp {spars[1]:.2f}"
        )
    else:
        spars = (float("nan"), float("nan"))
    for m, _engine in methods:
        if not runnable[m]:
            rows.append(
                {
                    "size": label,
                    "method": m,
                    "epochs": epochs,
                    "repeat": -1,
                    "status": "not run",
                    "reason": f"estimated {est['tangram'] / GIB:.0f} GiB > {avail / GIB:.0f} GiB available",
                    "est_peak_gib": est["tangram"] / GIB,
                }
            )
    for r in range(repeats):
        order = methods if r % 2 == 0 else methods[::-1]
        for m, engine in order:
            if not runnable[m]:
                continue
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "worker",
                "--method",
                "tangram" if m == "tangram" else "ours",
                "--data",
                str(data),
                "--epochs",
                str(epochs),
                "--seed",
                str(args.seed + r),
            ]
            if engine is not None:
                cmd += ["--engine", engine]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            load = common.loadavg()
            log(f"{label} repeat {r + 1}/{repeats} {m}: start (load {load})")
            res = common.run_measured(cmd, timeout=args.timeout)
            res.update(
                {
                    "size": label,
                    "method": m,
                    "epochs": epochs,
                    "repeat": r,
                    "loadavg_1m": load,
                    "loadavg_1m_after": common.loadavg(),
                    "zeros_ref": spars[0],
                    "zeros_sp": spars[1],
                    "est_peak_gib": est["tangram" if m == "tangram" else "ours"] / GIB,
                }
            )
            res["status"] = "ok" if res.get("returncode") == 0 and "error" not in res else "failed"
            if res["status"] == "ok":
                log(
                    f"  {m}: wall {res['process_wall_s']:.1f} s, setup {res['setup_s']:.1f} s, "
                    f"epoch {res['epoch_s_median'] * 1000:.1f} ms, peak {res['peak_rss_bytes'] / GIB:.2f} GiB, "
                    f"score {res['final_score']:.4f}"
                )
            else:
                log(f"  {m}: {res.get('error')}")
            rows.append(res)
    add_time_to_score(rows)
    return rows


def add_time_to_score(rows: list[dict[str, Any]]) -> None:
    """Per size and round: seconds (from the start of the map call) until each method's score
    is within ``SCORE_TOL`` of tangram-sc's final training score of the same round."""
    by_round: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "ok":
            by_round.setdefault((row["size"], row["repeat"]), {})[row["method"]] = row
    for rnd in by_round.values():
        tg = rnd.get("tangram")
        if tg is None:
            continue
        for row in rnd.values():
            sec, ep = time_to_reach(row, tg["final_score"])
            row["target_tangram_final_score"] = tg["final_score"]
            row["time_to_tangram_score_s"] = sec
            row["epochs_to_tangram_score"] = ep


def summarize(rows: list[dict[str, Any]], gflops: float) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    out = []
    for (size, method), g in df.groupby(["size", "method"], sort=False):
        n_ref, n_sp, n_genes = (int(x) for x in size.split("x"))
        ok = g[g["status"] == "ok"]
        rec: dict[str, Any] = {
            "size": size,
            "n_ref": n_ref,
            "n_sp": n_sp,
            "n_genes": n_genes,
            "method": method,
            "epochs": int(g["epochs"].iloc[0]),
            "runs": len(ok),
        }
        if len(ok) == 0:
            rec["status"] = g["status"].iloc[0]
            notes = [
                str(v) for col in ("reason", "error") if col in g for v in g[col].dropna().unique()
            ]
            rec["note"] = "; ".join(notes)
            rec["est_model_gib"] = float(g["est_peak_gib"].iloc[0])
            out.append(rec)
            continue
        rec["status"] = "measured"

        def med(col: str, scale: float = 1.0, ok: pd.DataFrame = ok) -> tuple[float, float, float]:
            v = ok[col].to_numpy(dtype=float) * scale if col in ok else np.array([np.nan])
            return float(np.median(v)), float(np.min(v)), float(np.max(v))

        for col, name, scale in [
            ("process_wall_s", "wall_s", 1),
            ("setup_s", "setup_s", 1),
            ("epoch_s_median", "epoch_ms", 1000),
            ("epoch_s_mean", "epoch_mean_ms", 1000),
            ("train_s", "train_s", 1),
            ("peak_rss_bytes", "peak_gib", 1 / GIB),
            ("final_score", "final_score", 1),
            ("time_to_tangram_score_s", "t_to_tg_score_s", 1),
        ]:
            m_, lo, hi = med(col, scale)
            rec[name] = m_
            rec[name + "_min"] = lo
            rec[name + "_max"] = hi
        rec["sampled_peak_gib"] = float(np.median(ok["sampled_peak_rss_bytes"])) / GIB
        rec["loadavg_median"] = float(np.median(ok["loadavg_1m"]))
        # labelled extrapolation: set-up + 1000 x mean epoch time (exact when epochs == 1000)
        rec["extrapolated_1000_epochs_s"] = rec["setup_s"] + 1000 * rec["epoch_mean_ms"] / 1000
        rec["floor_epoch_ms"] = floor_seconds(n_ref, n_sp, n_genes, gflops) * 1000
        out.append(rec)
    return pd.DataFrame(out)


def extrapolate(summary: pd.DataFrame, gflops: float) -> pd.DataFrame:
    """Fill sizes that could not run with estimates from the measured ones (labelled)."""
    rows = []
    for method in summary["method"].unique():
        s = summary[(summary["method"] == method)]
        meas = s[s["status"] == "measured"]
        if len(meas) >= 2:
            el = (meas["n_ref"] * meas["n_sp"]).to_numpy(dtype=float)
            work = (meas["n_ref"] * meas["n_sp"] * meas["n_genes"]).to_numpy(dtype=float)
            mem_b = np.polyfit(el, meas["peak_gib"].to_numpy() * GIB, 1)
            ms_per_work = float(np.median(meas["epoch_ms"].to_numpy() / work))
        else:
            mem_b, ms_per_work = None, None
        for _, r in s[s["status"] != "measured"].iterrows():
            e = r["n_ref"] * r["n_sp"]
            rec = r.to_dict()
            if mem_b is not None and mem_b[0] > 0:
                rec["est_peak_gib"] = float((mem_b[0] * e + mem_b[1]) / GIB)
                rec["est_epoch_ms"] = ms_per_work * r["n_ref"] * r["n_sp"] * r["n_genes"]
                rec["est_basis"] = (
                    "linear fit of measured peaks vs n_ref*n_sp; epoch time scaled by n_ref*n_sp*n_genes"
                )
            rec["floor_epoch_ms"] = (
                floor_seconds(r["n_ref"], r["n_sp"], r["n_genes"], gflops) * 1000
            )
            rows.append(rec)
    if not rows:
        return summary
    est = pd.DataFrame(rows)
    keep = summary[summary["status"] == "measured"]
    return pd.concat([keep, est], ignore_index=True)


def add_ratios(summary: pd.DataFrame) -> pd.DataFrame:
    """Tangram-sc / ours ratios per size (the headline)."""
    summary = summary.copy()
    for _size, g in summary.groupby("size", sort=False):
        tg = g[(g["method"] == "tangram") & (g["status"] == "measured")]
        if tg.empty:
            continue
        t = tg.iloc[0]
        for i in g.index:
            r = summary.loc[i]
            if r["method"] == "tangram" or r["status"] != "measured":
                continue
            for col in (
                "wall_s",
                "setup_s",
                "epoch_ms",
                "epoch_mean_ms",
                "peak_gib",
                "extrapolated_1000_epochs_s",
            ):
                summary.loc[i, f"tangram_over_ours_{col}"] = t[col] / r[col]
            if "t_to_tg_score_s" in r and np.isfinite(r["t_to_tg_score_s"]):
                summary.loc[i, "tangram_over_ours_time_to_score"] = (
                    t["t_to_tg_score_s"] / r["t_to_tg_score_s"]
                )
    return summary


def plot(summary: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.9), dpi=120)
    palette = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b"]
    colors = {"tangram": "#d62728"}
    for method in summary["method"].unique():
        if method not in colors:
            colors[method] = palette[(len(colors) - 1) % len(palette)]
    for method, g in summary.groupby("method", sort=False):
        c = colors[method]
        g = g.sort_values("n_sp")
        meas = g[g["status"] == "measured"]
        est = g[g["status"] != "measured"]
        if len(meas):
            yerr = [
                meas["epoch_ms"] - meas["epoch_ms_min"],
                meas["epoch_ms_max"] - meas["epoch_ms"],
            ]
            axes[0].errorbar(
                meas["n_sp"],
                meas["epoch_ms"] / 1000,
                yerr=np.asarray(yerr) / 1000,
                marker="o",
                color=c,
                label=f"{method} (measured)",
                capsize=3,
            )
            axes[1].plot(
                meas["n_sp"], meas["peak_gib"], marker="o", color=c, label=f"{method} (measured)"
            )
        if len(est) and "est_peak_gib" in est:
            ycol = est["est_peak_gib"].fillna(est.get("est_model_gib"))
            axes[1].plot(
                est["n_sp"],
                ycol,
                marker="o",
                mfc="none",
                ls="none",
                color=c,
                label=f"{method} (estimate, not run)",
            )
            if "est_epoch_ms" in est and est["est_epoch_ms"].notna().any():
                axes[0].plot(
                    est["n_sp"],
                    est["est_epoch_ms"] / 1000,
                    marker="o",
                    mfc="none",
                    ls="none",
                    color=c,
                    label=f"{method} (extrapolated)",
                )
    fl = summary.drop_duplicates("size").sort_values("n_sp")
    axes[0].plot(
        fl["n_sp"],
        fl["floor_epoch_ms"] / 1000,
        color="0.4",
        ls="--",
        marker="x",
        label="floor of the dense objective: 2 matmuls / measured GFLOP/s",
    )
    axes[1].axhline(common._ram_gib(), color="0.4", ls=":", label="RAM of this machine")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("spatial cells")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("seconds per epoch")
    axes[1].set_ylabel("peak resident memory (GiB)")
    axes[0].set_title("time per epoch (median, min-max)", fontsize=9)
    axes[1].set_title("peak RSS of the whole process", fontsize=9)
    labels = ", ".join(f"{r.n_ref}x{r.n_sp}x{r.n_genes}" for r in fl.itertuples())
    fig.suptitle(f"sizes (ref x spatial x genes): {labels}", fontsize=8)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        nargs="+",
        default=["2000x6000x130:1000", "9448x40864x132:15", "20000x200000x300:10"],
        help="N_REFxN_SPxN_GENES[:EPOCHS[:REPEATS]]",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--epochs", type=int, default=1000, help="epochs for sizes that do not name theirs"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["ours", "tangram"])
    p.add_argument("--engines", nargs="*", default=None)
    p.add_argument("--parity-size", default="2000x6000x130")
    p.add_argument("--parity-epochs", type=int, default=50)
    p.add_argument("--no-parity", action="store_true")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads in every run (default: torch's)"
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds per worker run")
    p.add_argument("--tag", default="", help="suffix of the output files")
    p.add_argument(
        "--resummarize",
        action="store_true",
        help="recompute the summary and plot from speed_runs.json (no new runs)",
    )
    p.add_argument("--out-dir", type=Path, default=common.BENCH_OUT)
    p.add_argument("--image-dir", type=Path, default=common.IMAGES)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "worker":
        _worker(argv[1:])
        return pd.DataFrame()
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = common.machine_info()
    info["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    tag = f"_{args.tag}" if args.tag else ""
    methods: list[tuple[str, str | None]] = []
    for m in args.methods:
        if m == "ours":
            avail = common.engine_names()
            methods += (
                [("ours", None)]
                if avail is None
                else [(f"ours[{e}]", e) for e in (args.engines or avail)]
            )
        elif m == "tangram":
            if common.tangram_available():
                methods.append(("tangram", None))
            else:
                log("tangram-sc is not installed: skipping it")
    if args.resummarize:
        rows = json.loads((args.out_dir / f"speed_runs{tag}.json").read_text())
        meta_path = args.out_dir / f"speed_meta{tag}.json"
        meta = json.loads(meta_path.read_text())
        gflops = meta["matmul_gflops_float32"]
        add_time_to_score(rows)
        common.write_json(rows, args.out_dir / f"speed_runs{tag}.json")
        raw = pd.DataFrame(
            [
                {k: v for k, v in r.items() if k not in ("epoch_end_s", "score_history")}
                for r in rows
            ]
        )
        common.write_csv(raw, args.out_dir / f"speed_runs{tag}.csv")
        summary = add_ratios(extrapolate(summarize(rows, gflops), gflops))
        common.write_csv(summary, args.out_dir / f"speed_summary{tag}.csv")
        plot(summary, args.image_dir / f"bench_speed_scaling{tag}.png")
        meta["score_tolerance"] = SCORE_TOL
        common.write_json(meta, meta_path)
        return summary
    gflops = common.matmul_gflops()
    info["matmul_gflops_float32"] = gflops
    info["score_tolerance"] = SCORE_TOL
    log(f"float32 matmul: {gflops:.1f} GFLOP/s; load {common.loadavg()}")
    if not args.no_parity and common.tangram_available():
        nr, ns, ng = (int(x) for x in args.parity_size.split("x"))
        log(f"parity check at {args.parity_size}, {args.parity_epochs} epochs")
        info["parity"] = parity(nr, ns, ng, args.parity_epochs, args.seed)
        log(json.dumps(info["parity"]))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nsi_speed_") as tmp:
        for s in args.sizes:
            rows += run_size(parse_size(s, args.epochs, args.repeats), args, methods, Path(tmp))
            raw = pd.DataFrame(
                [
                    {k: v for k, v in r.items() if k not in ("epoch_end_s", "score_history")}
                    for r in rows
                ]
            )
            common.write_csv(raw, args.out_dir / f"speed_runs{tag}.csv")
            common.write_json(rows, args.out_dir / f"speed_runs{tag}.json")
    summary = extrapolate(summarize(rows, gflops), gflops)
    summary = add_ratios(summary)
    common.write_csv(summary, args.out_dir / f"speed_summary{tag}.csv")
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    common.write_json(info, args.out_dir / f"speed_meta{tag}.json")
    plot(summary, args.image_dir / f"bench_speed_scaling{tag}.png")
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        print(summary.to_string(index=False), flush=True)
    return summary


if __name__ == "__main__":
    main()
