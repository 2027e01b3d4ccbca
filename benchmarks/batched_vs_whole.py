"""Batched (atlas) path vs the single map, side by side in one invocation (issue 25).

Given a folder with ``reference.h5ad`` and ``spatial.h5ad`` (``seed_shape.py`` or
``atlas_scale.py make``), runs one after the other, each a whole CLI process under
``/usr/bin/time -v``:

1. the unbatched default ``map`` (left out with ``--skip-whole``);
2. ``map --batch-key KEY --workers W`` for each W of ``--workers-list`` (ascending, so the
   1-worker run, when asked for, comes first and gives the parallel efficiency of the others).

Every run gets the same ``--map-args`` (e.g. ``--no-uncertainty``) and writes into a temporary
folder that is removed when the run ends (a 10^6 x 2,000 result with intervals is ~24 GB). Per
run, one JSON line is appended to ``docs/bench/atlas_batched_results.jsonl`` and a markdown table
row is printed:

* ``wall_s``: the whole process (``/usr/bin/time``); ``x_whole``: wall / the unbatched wall;
* ``client_peak_rss_gib``: the client process (the batch table's own record when batched, else
  ``/usr/bin/time``'s maximum, which is the client's when no workers run);
* ``client_cpu_s`` and ``client_cpu_share`` (of the wall): the client's own CPU, not its
  children's, over the whole process: its pid's user+system times sampled from /proc (psutil)
  every ``--sample-s`` (the last interval before it exits is missed); where sampling got nothing,
  the run's own record. ``client_cpu_s_uns``: that record,
  ``uns["spatial_impute"]["batches"]["client_cpu_s"]``, when the run made one; it is taken when
  uns is built, so it leaves out writing the result. ``tree_cpu_s``: user+sys of the process and
  the children it waited for; ``children_cpu_s``: the tree's less the client's;
* ``worker_peak_rss_gib``: each worker process's peak (the batch table's ``peak_rss_gib``);
* ``section_s``: median, min, max of the batches' seconds; ``ms_per_cell``: their sum / cells;
* ``parallel_efficiency``: t(1 worker) / (W x t(W)) on whole-process walls.

Examples (issue 25)::

    python benchmarks/seed_shape.py --out /tmp/seed_shape
    python benchmarks/batched_vs_whole.py --data /tmp/seed_shape --batch-key sample
    python benchmarks/atlas_scale.py make --cells 1000000 --sections 20 --reference-cells 50000 \\
        --genes 2000 --panel 300 --out /tmp/atlas_1m
    python benchmarks/batched_vs_whole.py --data /tmp/atlas_1m --batch-key section --skip-whole \\
        --workers-list 1,2
    python benchmarks/batched_vs_whole.py --data /tmp/atlas_1m --batch-key section --skip-whole \\
        --workers-list 1,2 --map-args=--no-uncertainty
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from atlas_scale import _time_v

RESULTS = common.BENCH_OUT / "atlas_batched_results.jsonl"
GIB = 1024**3
COLUMNS = [
    "run",
    "cells",
    "wall s",
    "x whole",
    "client peak GiB",
    "client CPU s (share)",
    "worker peaks GiB",
    "section s med [min-max]",
    "ms/cell",
    "par. eff.",
    "load",
]


class ClientSampler(threading.Thread):
    """The client's own CPU seconds and RSS, sampled while ``/usr/bin/time`` runs it."""

    def __init__(self, time_pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.time_pid, self.every = time_pid, every
        self.cpu_s = float("nan")
        self.peak_rss = 0
        self.done = threading.Event()

    def run(self) -> None:
        import psutil  # type: ignore[import-untyped]

        client = None
        while not self.done.is_set():
            try:
                if client is None:  # /usr/bin/time's one child, once it has exec'd
                    kids = psutil.Process(self.time_pid).children()
                    client = kids[0] if kids else None
                if client is not None:
                    with client.oneshot():
                        t = client.cpu_times()  # user/system exclude the children's
                        self.cpu_s = t.user + t.system
                        self.peak_rss = max(self.peak_rss, client.memory_info().rss)
            except psutil.Error:
                pass  # gone, or not started yet
            self.done.wait(self.every)


def _uns(path: Path) -> dict[str, Any]:
    """The result's uns only (its X may be many GB)."""
    from anndata.io import read_elem

    if path.suffix == ".zarr":
        import zarr

        return read_elem(zarr.open_group(str(path), mode="r")["uns"])
    import h5py

    with h5py.File(path, "r") as fh:
        return read_elem(fh["uns"])


def _command(args: argparse.Namespace, out: Path, workers: int | None) -> list[str]:
    data = Path(args.data)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "napari_spatial_impute.cli", "map"]
    cmd += ["-r", str(data / "reference.h5ad"), "-s", str(data / "spatial.h5ad")]
    cmd += ["--out", str(out)]
    if args.cluster_key:
        cmd += ["--cluster-key", args.cluster_key]
    if workers is not None:
        cmd += ["--batch-key", args.batch_key, "--workers", str(workers)]
    return cmd + args.map_args.split()


def run_one(args: argparse.Namespace, workers: int | None, cells: int) -> dict[str, Any]:
    """One CLI run, measured; its output folder removed afterwards."""
    label = "whole" if workers is None else f"batched_w{workers}"
    tmp = Path(tempfile.mkdtemp(prefix="batched_vs_whole_", dir=args.tmp_dir))
    out = tmp / f"result{args.suffix}"
    cmd = _command(args, out, workers)
    common.log(" ".join(cmd[2:]))
    row: dict[str, Any] = {"run": label, "workers": workers, "cells": cells}
    row["load_before"] = common.loadavg()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = ClientSampler(proc.pid, args.sample_s)
        sampler.start()
        stdout, stderr = proc.communicate()
        sampler.done.set()
        sampler.join()
        row["load_after"] = common.loadavg()
        if proc.returncode != 0:
            lines = [
                x
                for x in stderr.splitlines()
                if x.strip() and not x.startswith(("\t", "Command exited with"))
            ]
            row["status"] = "failed"
            row["error"] = lines[-1] if lines else f"exit status {proc.returncode}"
            sys.stderr.write(stderr[-3000:])
            return row
        row["status"] = "ok"
        timed = _time_v(stderr)
        row["wall_s"] = timed.get("wall_s")
        row["process_tree_peak_rss_gib"] = timed.get("client_peak_rss_gib")
        row["tree_cpu_s"] = timed.get("tree_user_s", np.nan) + timed.get("tree_sys_s", np.nan)
        row["client_peak_rss_gib_sampled"] = sampler.peak_rss / GIB
        row["client_cpu_s"], row["client_cpu_source"] = sampler.cpu_s, "psutil"
        info = _uns(out).get("spatial_impute", {})
        batches = info.get("batches")
        if batches is None:  # no workers: the process tree is the client
            row["client_peak_rss_gib"] = row["process_tree_peak_rss_gib"]
        else:
            row.update(_batch_columns(batches))
            if not np.isfinite(row["client_cpu_s"]) and "client_cpu_s_uns" in row:
                row["client_cpu_s"], row["client_cpu_source"] = row["client_cpu_s_uns"], "uns"
        row["client_cpu_share"] = row["client_cpu_s"] / row["wall_s"]
        # the workers' (and any other waited-for children's) CPU: the tree's less the client's
        row["children_cpu_s"] = row["tree_cpu_s"] - row["client_cpu_s"]
        row["wall_ms_per_cell"] = 1e3 * row["wall_s"] / cells
        row["stdout_tail"] = stdout.strip().splitlines()[-3:]
        return row
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _batch_columns(batches: dict[str, Any]) -> dict[str, Any]:
    table = batches["table"]
    seconds = table["seconds"].to_numpy(dtype=float)
    cols: dict[str, Any] = {
        "sections": int(len(table)),
        "client_peak_rss_gib": float(batches["client_peak_rss_gib"]),
        "worker_peak_rss_gib": {
            str(w): float(p) for w, p in table.groupby("worker")["peak_rss_gib"].max().items()
        },
        "section_s_median": float(np.median(seconds)),
        "section_s_min": float(np.min(seconds)),
        "section_s_max": float(np.max(seconds)),
        "section_s_sum": float(np.sum(seconds)),
        "ms_per_cell": 1e3 * float(np.sum(seconds)) / float(table["n_cells"].sum()),
        "section_seconds": [float(x) for x in seconds],
    }
    if "client_cpu_s" in batches:  # the run's own record (up to building uns)
        cols["client_cpu_s_uns"] = float(batches["client_cpu_s"])
    return cols


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def md_row(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        cells = [row["run"], str(row["cells"]), f"failed: {row['error']}"] + [""] * 8
        return "| " + " | ".join(cells) + " |"
    peaks = row.get("worker_peak_rss_gib") or {}
    section = "-"
    if "section_s_median" in row:
        section = (
            f"{row['section_s_median']:.1f} [{row['section_s_min']:.1f}-{row['section_s_max']:.1f}]"
        )
    cells = [
        row["run"],
        f"{row['cells']:,}",
        f"{row['wall_s']:.1f}",
        _fmt(row.get("x_whole"), ".2f"),
        f"{row['client_peak_rss_gib']:.2f}",
        f"{row['client_cpu_s']:.1f} ({row['client_cpu_share']:.0%}, {row['client_cpu_source']})"
        + (f" [uns {row['client_cpu_s_uns']:.1f}]" if "client_cpu_s_uns" in row else ""),
        ", ".join(f"{p:.2f}" for p in peaks.values()) or "-",
        section,
        _fmt(row["ms_per_cell"], ".3f")
        if "ms_per_cell" in row
        else f"{row['wall_ms_per_cell']:.3f} (wall)",
        _fmt(row.get("parallel_efficiency"), ".2f"),
        f"{row['load_before']}-{row['load_after']}",
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with reference.h5ad and spatial.h5ad")
    p.add_argument("--batch-key", default="sample", help="spatial obs column of the sections")
    p.add_argument("--workers-list", default="2", help="workers of each batched run, e.g. 1,2")
    p.add_argument("--skip-whole", action="store_true", help="leave out the unbatched run")
    p.add_argument("--cluster-key", default="cell_type", help="'' for none")
    p.add_argument(
        "--map-args", default="", help="more map options for every run, e.g. '--no-uncertainty'"
    )
    p.add_argument("--suffix", default=".h5ad", choices=[".h5ad", ".zarr"], help="result format")
    p.add_argument("--tmp-dir", default=None, help="where results are written, then removed")
    p.add_argument("--sample-s", type=float, default=0.2, help="client CPU sampling interval")
    p.add_argument("--results", default=str(RESULTS), help="JSON lines file to append to")
    args = p.parse_args(argv)
    if not Path("/usr/bin/time").exists():
        raise SystemExit("GNU time (/usr/bin/time) is not installed: every run is timed with it.")
    data = Path(args.data)
    for name in ("reference.h5ad", "spatial.h5ad"):
        if not (data / name).exists():
            raise SystemExit(f"{data / name} does not exist: make the data first (see --help).")
    try:
        workers_list = sorted({int(w) for w in args.workers_list.split(",") if w.strip()})
    except ValueError:
        raise SystemExit(f"--workers-list {args.workers_list!r}: give numbers, e.g. 1,2") from None
    import anndata as ad

    spatial = ad.read_h5ad(data / "spatial.h5ad", backed="r")
    cells = int(spatial.n_obs)
    if args.batch_key not in spatial.obs:
        raise SystemExit(f"--batch-key {args.batch_key!r} is not a spatial obs column.")
    spatial.file.close()
    meta = common.machine_info()
    group = {"compare_id": time.strftime("%Y-%m-%dT%H:%M:%S"), "data": str(data)}
    group |= {"batch_key": args.batch_key}
    group |= {"map_args": args.map_args, "cluster_key": args.cluster_key, "suffix": args.suffix}
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)
    runs: list[int | None] = ([] if args.skip_whole else [None]) + list(workers_list)
    whole_s = one_s = None
    failed = 0
    for workers in runs:
        row = run_one(args, workers, cells)
        if row["status"] == "ok":
            if workers is None:
                whole_s = row["wall_s"]
            elif whole_s:
                row["x_whole"] = row["wall_s"] / whole_s
            if workers == 1:
                one_s = row["wall_s"]
            if workers and one_s:
                row["parallel_efficiency"] = one_s / (workers * row["wall_s"])
        else:
            failed += 1
        row = group | row | meta
        with results.open("a") as fh:
            fh.write(json.dumps(row, default=common._json_default) + "\n")
        print(md_row(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
