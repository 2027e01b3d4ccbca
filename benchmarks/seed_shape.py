"""Seeded synthetic data of a whole-section shape: samples, fields of view, a panel (issues 12, 14).

The seed's own data set is 40,864 MERFISH cells in 140 FOVs over 4 fetal livers, against 9,448
reference cells; a MERSCOPE/Xenium/CosMx section is 10^5-10^6 cells in hundreds of FOVs. This
script builds pairs of that shape from :func:`common.simulate_pair` (cell types with marker
programs, raw counts, per-gene detection efficiencies, a spatial panel of the reference's genes):

* each spatial cell belongs to one sample (obs ``sample``, Categorical) and one FOV (obs ``fov``,
  Categorical, ``"<sample>_<n>"``); the FOVs of a sample tile a grid of ``--fov-size`` µm
  squares, and every sample uses the same coordinates (as sections imaged separately do), so
  samples overlap unless they are laid out side by side;
* cell types follow bands across each section (as in ``simulate_pair``).

Defaults are the seed's shape; ``--cells 1000000 --fovs 500 --samples 1`` is one large section.
Writes ``reference.h5ad`` and ``spatial.h5ad`` into ``--out``::

    python benchmarks/seed_shape.py --out /tmp/seed_shape
    python benchmarks/seed_shape.py --cells 1000000 --fovs 500 --samples 1 --out /tmp/section_1m
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def make_pair(
    n_cells: int = 40_864,
    n_fovs: int = 140,
    n_samples: int = 4,
    n_reference: int = 9_448,
    n_genes: int = 2_000,
    n_panel: int = 132,
    fov_size: float = 200.0,
    seed: int = 0,
) -> tuple[ad.AnnData, ad.AnnData]:
    """``(reference, spatial)`` AnnData of the given shape (see the module docstring)."""
    if n_fovs < n_samples:
        raise ValueError(f"{n_fovs} FOVs cannot cover {n_samples} samples; give more FOVs.")
    ref, spa = common.simulate_pair(n_reference, n_cells, n_genes, seed=seed, panel=n_panel)
    rng = np.random.default_rng(seed + 2)
    # FOVs per sample (as equal as possible), each sample's FOVs on a near-square grid
    per_sample = np.array_split(np.arange(n_fovs), n_samples)
    sample = rng.integers(0, n_samples, size=n_cells)
    unit = np.asarray(spa.obsm["spatial"], dtype=np.float64) / 1000.0  # the bands' square, 0..1
    xy = np.empty_like(unit)
    fov = np.empty(n_cells, dtype=object)
    for s, fovs in enumerate(per_sample):
        cols = int(np.ceil(np.sqrt(len(fovs))))
        rows = int(np.ceil(len(fovs) / cols))
        mine = np.flatnonzero(sample == s)
        # the section is the grid's rectangle; a cell's tile follows from its place in it
        gx = np.minimum((unit[mine, 0] * cols).astype(int), cols - 1)
        gy = np.minimum((unit[mine, 1] * rows).astype(int), rows - 1)
        tile = np.minimum(gy * cols + gx, len(fovs) - 1)
        xy[mine, 0] = unit[mine, 0] * cols * fov_size
        xy[mine, 1] = unit[mine, 1] * rows * fov_size
        fov[mine] = [f"s{s}_{int(t)}" for t in tile]
    names = [f"s{s}" for s in range(n_samples)]
    spa.obs["sample"] = pd.Categorical([names[s] for s in sample], categories=names)
    spa.obs["fov"] = pd.Categorical(fov)
    spa.obsm["spatial"] = xy.astype(np.float32)
    return ref, spa


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=40_864)
    p.add_argument("--fovs", type=int, default=140)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--reference-cells", type=int, default=9_448)
    p.add_argument("--genes", type=int, default=2_000, help="reference genes")
    p.add_argument("--panel", type=int, default=132, help="genes the spatial assay measures")
    p.add_argument("--fov-size", type=float, default=200.0, help="FOV side in µm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for reference.h5ad and spatial.h5ad")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    ref, spa = make_pair(
        args.cells,
        args.fovs,
        args.samples,
        args.reference_cells,
        args.genes,
        args.panel,
        args.fov_size,
        args.seed,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref.write_h5ad(out / "reference.h5ad")
    spa.write_h5ad(out / "spatial.h5ad")
    fovs = spa.obs["fov"].nunique()
    common.log(
        f"wrote {out}: reference {ref.shape}, spatial {spa.shape} in {fovs} FOVs over "
        f"{args.samples} samples ({time.perf_counter() - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
