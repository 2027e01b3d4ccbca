"""Atlas scale (issue 14): many sections mapped batch by batch on a Dask LocalCluster.

Two steps::

    # seeded synthetic atlas: 1,000,000 spatial cells in 20 sections (file ordered by section),
    # 50,000 reference cells x 2,000 genes, a 300-gene panel
    python benchmarks/atlas_scale.py make --cells 1000000 --sections 20 --reference-cells 50000 \\
        --genes 2000 --panel 300 --out /tmp/atlas_1m
    # the whole run through the CLI (reading, mapping, imputing every gene, writing), timed from
    # outside; then one section mapped alone in one process and compared with its rows
    python benchmarks/atlas_scale.py run --data /tmp/atlas_1m --workers 2 --check-section s0

``run`` appends one JSON line to ``docs/bench/atlas_scale_results.jsonl``: whole-process wall
time and the client's peak RSS (``/usr/bin/time -v``), each batch's seconds, worker and that
worker process's peak RSS (recorded by the batch), and the largest difference between the batch's
rows and the single-process mapping of that section.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from napari_spatial_impute.core.export import result_to_anndata

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

RESULTS = common.BENCH_OUT / "atlas_scale_results.jsonl"


def make(args: argparse.Namespace) -> int:
    import seed_shape

    t0 = time.perf_counter()
    ref, spa = seed_shape.make_pair(
        args.cells,
        args.sections * args.fovs_per_section,
        args.sections,
        args.reference_cells,
        args.genes,
        args.panel,
        seed=args.seed,
    )
    # a section per sample; the file ordered by section, as atlas files are
    spa.obs["section"] = spa.obs["sample"]
    spa = spa[np.argsort(spa.obs["section"].cat.codes.to_numpy(), kind="stable")].copy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref.write_h5ad(out / "reference.h5ad")
    spa.write_h5ad(out / "spatial.h5ad")
    common.log(
        f"wrote {out}: reference {ref.shape}, spatial {spa.shape} in {args.sections} sections "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0


def _time_v(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Maximum resident set size (kbytes):"):
            found["client_peak_rss_gib"] = int(line.rsplit(":", 1)[1]) / 1024**2
        if line.startswith(("User time (seconds):", "System time (seconds):")):
            # the process and the children it waited for (a LocalCluster's workers too)
            key = "tree_user_s" if line.startswith("User") else "tree_sys_s"
            found[key] = float(line.rsplit(":", 1)[1])
        if line.startswith("Elapsed (wall clock) time"):
            clock = line.rsplit(" ", 1)[1].split(":")
            found["wall_s"] = sum(float(x) * 60**i for i, x in enumerate(reversed(clock)))
    return found


def run(args: argparse.Namespace) -> int:
    import anndata as ad

    import napari_spatial_impute as nsi

    data = Path(args.data)
    out = Path(args.out or data / f"result_w{args.workers}.zarr")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cmd = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "napari_spatial_impute.cli",
        "map",
        "-r",
        str(data / "reference.h5ad"),
        "-s",
        str(data / "spatial.h5ad"),
        "--cluster-key",
        "cell_type",
        "--batch-key",
        "section",
        "--workers",
        str(args.workers),
        "--out",
        str(out),
    ]
    if args.memory_limit:
        cmd += ["--memory-limit", args.memory_limit]
    cmd += args.map_args.split() if args.map_args else []
    common.log(" ".join(cmd[2:]))
    load0 = common.loadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    sys.stdout.write(proc.stdout[-4000:])
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        return proc.returncode
    measured = _time_v(proc.stderr)
    result = ad.read_zarr(out)
    table = result.uns["spatial_impute"]["batches"]["table"]
    row: dict[str, object] = {
        "cells": int(result.n_obs),
        "genes_imputed": int(result.n_vars),
        "sections": int(len(table)),
        "workers": args.workers,
        "memory_limit": args.memory_limit or "auto",
        "map_args": args.map_args,
        "wall_s": measured.get("wall_s", wall),
        # /usr/bin/time's maximum covers the whole process tree (workers are children)
        "process_tree_peak_rss_gib": measured.get("client_peak_rss_gib"),
        "client_peak_rss_gib": float(
            result.uns["spatial_impute"]["batches"]["client_peak_rss_gib"]
        ),
        "worker_peak_rss_gib": float(np.nanmax(table["peak_rss_gib"])),
        "batch_seconds_median": float(np.median(table["seconds"])),
        "batch_seconds": [float(x) for x in table["seconds"]],
        "load_before": load0,
        "load_after": common.loadavg(),
    }
    if args.check_section:
        spa = ad.read_h5ad(data / "spatial.h5ad", backed="r")
        rows = np.flatnonzero(spa.obs["section"].astype(str).to_numpy() == args.check_section)
        alone_sp = spa[rows].to_memory()
        ref = ad.read_h5ad(data / "reference.h5ad")
        t1 = time.perf_counter()
        uncertainty = "--no-uncertainty" not in (args.map_args or "")
        # the map the run chose once for every section (issue 22), made on this section alone
        method = str(result.uns["spatial_impute"]["params"].get("method", "auto"))
        alone = result_to_anndata(
            nsi.map_cells_to_space(
                ref,
                alone_sp,
                cluster_key="cell_type",
                uncertainty=uncertainty,
                method=method,  # type: ignore[arg-type]
            )
        )
        row["single_process_section_s"] = time.perf_counter() - t1
        X = np.asarray(result.X[rows[0] : rows[-1] + 1])
        row["check_section"] = args.check_section
        row["max_abs_diff"] = float(np.max(np.abs(X - alone.X)))
        row["max_value"] = float(np.max(alone.X))
        pred = result.obs["cell_type_predicted"].astype(str).to_numpy()[rows]
        row["predicted_agreement"] = float(
            np.mean(pred == alone.obs["cell_type_predicted"].astype(str).to_numpy())
        )
    row.update(common.machine_info())
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as fh:
        fh.write(json.dumps(row, default=common._json_default) + "\n")
    common.log(json.dumps({k: v for k, v in row.items() if k != "batch_seconds"}, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    m = sub.add_parser("make", help="write a seeded synthetic atlas")
    m.add_argument("--cells", type=int, default=1_000_000)
    m.add_argument("--sections", type=int, default=20)
    m.add_argument("--fovs-per-section", type=int, default=25)
    m.add_argument("--reference-cells", type=int, default=50_000)
    m.add_argument("--genes", type=int, default=2_000)
    m.add_argument("--panel", type=int, default=300)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", required=True)
    r = sub.add_parser("run", help="map it through the CLI and compare one section")
    r.add_argument("--data", required=True)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--memory-limit", default=None)
    r.add_argument("--out", default=None)
    r.add_argument("--check-section", default=None)
    r.add_argument("--results", default=str(RESULTS), help="JSON lines file to append to")
    r.add_argument(
        "--map-args", default="", help="more map options in one string, e.g. '--no-uncertainty'"
    )
    args = p.parse_args(argv)
    return make(args) if args.step == "make" else run(args)


if __name__ == "__main__":
    raise SystemExit(main())
