"""What holding a mapping result costs a viewer: eager (every gene and interval in memory) vs lazy.

Issue 24, "Genes read lazily": the viewer held 9.1 GiB at 10^6 cells because the whole imputed
matrix and its intervals sat in memory. Here each mode runs in a fresh process:

* the map is made once on a base of ``--base-cells`` spatial cells (``seed_shape.make_pair``
  data: 3,000 reference cells, 2,000 reference genes, a 132-gene panel; the ensemble map with its
  calibration, cluster key ``cell_type``) and cached in ``--out``;
* a process tiles it to ``N`` cells (the map's rows, the spatial cells and their calibration
  groups repeated: the same sparsity and work per cell as a real map of ``N`` cells), records its
  resident memory (``VmRSS``), builds the result AnnData the viewer holds (``eager``:
  :func:`~napari_spatial_impute.core.export.result_to_anndata`; ``lazy``:
  :func:`~napari_spatial_impute.core.lazy_result.lazy_result`), drops the map record (the viewer
  keeps only the result; the lazy one keeps the lean map inside its graph) and records the
  memory again, the peak (``VmHWM``) and the time to build it; then reads genes as the Explore
  widget does (``explore.values`` + the interval's ``halfwidths``): a first gene, another, and
  the first again (cached in the lazy mode).

``held_gib`` is the resident memory the result adds: what is beyond the spatial and reference
data the viewer holds anyway. Eager needs 4 bytes x cells x genes x 3 (X and two interval
levels): 24 GB at 10^6 x 2,000, more than this machine; it is measured at smaller sizes (say
which) and grows linearly.

Usage::

    python benchmarks/viewer_memory.py --out /tmp/bench_lazy \\
        --lazy-cells 100000 1000000 --eager-cells 100000 250000
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Columns of the genes shown (a first gene, another, the first again).
GENES_SHOWN = (100, 1500)


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def base_map(out: Path, base_cells: int) -> Path:
    """The base pair and its ensemble map, made once and pickled."""
    path = out / f"base_{base_cells}.pkl"
    if path.exists():
        return path
    import seed_shape

    import napari_spatial_impute as nsi

    ref, spa = seed_shape.make_pair(base_cells, 10, 1, 3_000, 2_000, 132)
    t0 = time.perf_counter()
    result = nsi.map_cells_to_space(ref, spa, method="ensemble", cluster_key="cell_type", seed=0)
    print(f"base map of {base_cells} cells: {time.perf_counter() - t0:.1f} s", flush=True)
    with open(path, "wb") as fh:
        pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def tile_result(result: Any, n: int) -> Any:
    """``result`` with its spatial cells repeated to ``n`` cells (same map per cell)."""
    import dataclasses

    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    base = result.spatial.n_obs
    reps = -(-n // base)
    idx = np.tile(np.arange(base), reps)[:n]
    names = [f"c{i}" for i in range(n)]

    def cells(a: ad.AnnData) -> ad.AnnData:
        X = a.X[idx] if sp.issparse(a.X) else np.asarray(a.X)[idx]
        obs = a.obs.iloc[idx].copy()
        obs.index = pd.Index(names)
        out = ad.AnnData(X=X, obs=obs, var=a.var.copy())
        if "spatial" in a.obsm:
            xy = np.asarray(a.obsm["spatial"], dtype=np.float32)
            shift = (np.arange(n) // base).astype(np.float32) * (xy[:, 0].max() + 100)
            xy = xy[idx].copy()
            xy[:, 0] += shift
            out.obsm["spatial"] = xy
        return out

    W = sp.csr_matrix(result.neighbours)[idx]
    cal = dataclasses.replace(result.calibration, groups=result.calibration.groups[idx])
    return dataclasses.replace(
        result,
        spatial=cells(result.spatial),
        spatial_values=cells(result.spatial_values),
        neighbours=W,
        probabilities=sp.csr_matrix(W.T),
        calibration=cal,
    )


def run_one(mode: str, n: int, base: Path) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    from napari_spatial_impute.core.export import result_to_anndata
    from napari_spatial_impute.core.lazy_result import lazy_result
    from napari_spatial_impute.io.schema import halfwidths
    from napari_spatial_impute.viz.explore import values

    with open(base, "rb") as fh:
        result = tile_result(pickle.load(fh), n)
    gc.collect()
    before = _status("VmRSS")
    t0 = time.perf_counter()
    adata = result_to_anndata(result) if mode == "eager" else lazy_result(result)
    build_s = time.perf_counter() - t0
    del result
    gc.collect()
    held = _status("VmRSS") - before
    reads = []
    for j in (*GENES_SHOWN, GENES_SHOWN[0]):
        gene = str(adata.var_names[j])
        t0 = time.perf_counter()
        v = values(adata, "imputed", gene)
        hw = halfwidths(adata, gene, "90")
        reads.append(
            {"gene": gene, "s": round(time.perf_counter() - t0, 4), "mean": float(v.mean())}
        )
        assert hw.shape == v.shape
    return {
        "mode": mode,
        "cells": n,
        "genes": int(adata.n_vars),
        "interval_levels": sorted(adata.layers),
        "build_s": round(build_s, 2),
        "held_gib": round(held / 2**30, 3),
        "rss_after_gib": round(_status("VmRSS") / 2**30, 3),
        "peak_rss_gib": round(_status("VmHWM") / 2**30, 3),
        "first_gene_s": reads[0]["s"],
        "other_gene_s": reads[1]["s"],
        "same_gene_again_s": reads[2]["s"],
        "reads": reads,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/bench_lazy")
    p.add_argument("--base-cells", type=int, default=20_000)
    p.add_argument("--lazy-cells", type=int, nargs="*", default=[100_000, 1_000_000])
    p.add_argument("--eager-cells", type=int, nargs="*", default=[100_000, 250_000])
    p.add_argument("--one", nargs=2, metavar=("MODE", "CELLS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_map(out, args.base_cells)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), base)))
        return 0
    rows = []
    plan = [("eager", n) for n in args.eager_cells] + [("lazy", n) for n in args.lazy_cells]
    for mode, n in plan:
        cmd = [sys.executable, __file__, "--out", str(out), "--base-cells", str(args.base_cells)]
        cmd += ["--one", mode, str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"mode": mode, "cells": n, "error": proc.stderr.strip()[-400:]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    (out / "viewer_memory.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
