"""SpatialData stores at section scale: reading cells and writing results, ours beside spatialdata's.

    .venv/bin/python benchmarks/store_io.py --cells 200000 --fovs 100 --out out/store_io

Builds (seeded, once) a CosMx-shaped store: ``--fovs`` label images of ``--fov-px`` x ``--fov-px``
pixels, one per FOV (square cells on a grid, ids 1..n per FOV), each translated to its place in
``global``, and a table of ``--genes`` sparse counts annotating them. Each step then runs in a
fresh process (time and peak resident memory are its own):

* ``read_ours``: :func:`napari_spatial_impute.io.sdata.read_spatial` (cells placed in ``global``
  from the label centroids, read block by block);
* ``read_peer``: what spatialdata's own API does for the same: ``sd.read_zarr`` (which reads
  every table of the store into memory, the results tables of earlier repeats included), then
  ``sd.get_centroids(labels, "global")`` per FOV and the table matched to them by instance id;
* ``write_ours``: a results table of ``--imputed`` genes (float32) written with
  :func:`napari_spatial_impute.io.sdata_write.write_table` (staged beside the store, renamed in,
  metadata consolidated);
* ``write_peer``: the same table with spatialdata's ``sdata.write_element`` (in place, not
  atomic).

Results as JSON lines in ``--out/results.jsonl`` and a summary table on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.simplefilter("ignore")


def build(path: Path, cells: int, fovs: int, fov_px: int, genes: int, seed: int = 0) -> None:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    import spatialdata as sd
    from spatialdata.models import Labels2DModel, TableModel
    from spatialdata.transformations import Identity, Translation

    rng = np.random.default_rng(seed)
    per_fov = cells // fovs
    side = int(np.ceil(np.sqrt(per_fov)))
    step = fov_px // side
    grid = int(np.ceil(np.sqrt(fovs)))
    labels, regions, ids = {}, [], []
    for f in range(fovs):
        lab = np.zeros((fov_px, fov_px), dtype=np.uint32)
        for k in range(per_fov):
            r, c = divmod(k, side)
            lab[r * step + 1 : (r + 1) * step - 1, c * step + 1 : (c + 1) * step - 1] = k + 1
        gy, gx = divmod(f, grid)
        t = {"global": Translation([gx * fov_px * 1.05, gy * fov_px * 1.05], axes=("x", "y")),
             f"fov{f}": Identity()}  # fmt: skip
        labels[f"fov{f}_labels"] = Labels2DModel.parse(
            lab, dims=("y", "x"), transformations=t, chunks=(1024, 1024)
        )
        regions += [f"fov{f}_labels"] * per_fov
        ids += list(range(1, per_fov + 1))
    n = len(ids)
    X = sp.random(n, genes, density=0.1, format="csr", random_state=seed, dtype=np.float32)
    X.data = rng.poisson(3, X.nnz).astype(np.float32) + 1
    table = ad.AnnData(
        X,
        obs=pd.DataFrame(
            {"fov_labels": pd.Categorical(regions), "cell_ID": np.asarray(ids, dtype=np.int64)},
            index=[f"c{i}" for i in range(n)],
        ),
        var=pd.DataFrame(index=[f"g{i}" for i in range(genes)]),
    )
    table = TableModel.parse(
        table, region=sorted(set(regions)), region_key="fov_labels", instance_key="cell_ID"
    )
    sd.SpatialData(labels=labels, tables={"table": table}).write(path)


def read_ours(store: str) -> dict:
    from napari_spatial_impute.io.sdata import read_spatial

    adata = read_spatial(store, table="table")
    return {"cells": int(adata.n_obs), "x_mean": float(adata.obsm["spatial"][:, 0].mean())}


def read_peer(store: str) -> dict:
    import pandas as pd
    import spatialdata as sd

    sdata = sd.read_zarr(store)
    table = sdata.tables["table"]
    parts = []
    for name in sdata.labels:
        c = sd.get_centroids(sdata.labels[name], "global").compute()
        parts.append(pd.DataFrame({"region": name, "id": c.index, "x": c["x"], "y": c["y"]}))
    cents = pd.concat(parts).set_index(["region", "id"])
    key = pd.MultiIndex.from_arrays([table.obs["fov_labels"].astype(str), table.obs["cell_ID"]])
    xy = cents.reindex(key)[["x", "y"]].to_numpy()
    return {"cells": int(np.isfinite(xy).all(axis=1).sum()), "x_mean": float(np.nanmean(xy[:, 0]))}


def _results_table(store: str, imputed: int):
    import anndata as ad
    import pandas as pd
    from spatialdata.models import TableModel

    cells = ad.read_zarr(Path(store) / "tables" / "table")  # only the cells' table
    rng = np.random.default_rng(1)
    X = rng.random((cells.n_obs, imputed), dtype=np.float32)
    t = ad.AnnData(X, obs=cells.obs[["fov_labels", "cell_ID"]].copy())
    t.var_names = [f"g{i}" for i in range(imputed)]
    t.obs["fov_labels"] = pd.Categorical(t.obs["fov_labels"].astype(str))
    t.uns["spatial_impute"] = {"benchmark": "store_io"}  # a results table: may be replaced
    regions = sorted(t.obs["fov_labels"].cat.categories)
    return TableModel.parse(t, region=regions, region_key="fov_labels", instance_key="cell_ID")


def write_ours(store: str, imputed: int) -> dict:
    from napari_spatial_impute.io.sdata_write import write_table

    table = _results_table(store, imputed)
    t0 = time.perf_counter()
    write_table(table, store, "bench_ours", overwrite=True)
    return {"write_s": time.perf_counter() - t0}


def write_peer(store: str, imputed: int) -> dict:
    import spatialdata as sd

    table = _results_table(store, imputed)
    sdata = sd.read_zarr(store)
    t0 = time.perf_counter()
    if "bench_peer" in sdata.tables:
        sdata.delete_element_from_disk("bench_peer")
        del sdata.tables["bench_peer"]
    sdata.tables["bench_peer"] = table
    sdata.write_element("bench_peer")
    sdata.write_consolidated_metadata()
    return {"write_s": time.perf_counter() - t0}


STEPS = {"read_ours": read_ours, "read_peer": read_peer}
WRITES = {"write_ours": write_ours, "write_peer": write_peer}


def _peak_rss_gib() -> float:
    """This process's peak resident memory (``VmHWM``: since its exec, unlike ``ru_maxrss``,
    which Linux carries over from the parent that spawned it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(step: str, store: str, imputed: int) -> None:
    t0 = time.perf_counter()
    extra = STEPS[step](store) if step in STEPS else WRITES[step](store, imputed)
    out = {
        "step": step,
        "wall_s": time.perf_counter() - t0,
        "peak_rss_gib": _peak_rss_gib(),
        **extra,
    }
    print(json.dumps(out))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--fovs", type=int, default=100)
    p.add_argument("--fov-px", type=int, default=2048)
    p.add_argument("--genes", type=int, default=300)
    p.add_argument("--imputed", type=int, default=500)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="out/store_io")
    p.add_argument(
        "--steps",
        default="read_ours,read_peer,write_ours,write_peer",
        help="comma-separated steps to run (default: all four)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--store", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.store, args.imputed)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / f"cells{args.cells}_fovs{args.fovs}.zarr"
    if not store.exists():
        t0 = time.perf_counter()
        build(store, args.cells, args.fovs, args.fov_px, args.genes)
        print(f"built {store} in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    steps = [s for s in args.steps.split(",") if s]
    for _ in range(args.repeats):
        for step in steps:
            cmd = [sys.executable, __file__, "--child", step, "--store", str(store)]
            cmd += ["--imputed", str(args.imputed)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row.update(cells=args.cells, fovs=args.fovs, fov_px=args.fov_px, imputed=args.imputed)
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(out / "results.jsonl", "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    for step in steps:
        mine = [r for r in rows if r["step"] == step]
        key = "write_s" if step.startswith("write") else "wall_s"
        print(
            f"{step:11s} {min(r[key] for r in mine):7.1f} s  "
            f"peak {max(r['peak_rss_gib'] for r in mine):5.2f} GiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
