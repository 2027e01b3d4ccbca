"""Seeded test data: a synthetic reference/spatial pair, small SpatialData stores, file digests."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def make_synthetic(
    n_ref: int = 60,
    n_sp: int = 40,
    n_genes: int = 12,
    n_types: int = 3,
    seed: int = 0,
    extra_ref_genes: int = 3,
    sparse: bool = True,
) -> tuple[ad.AnnData, ad.AnnData]:
    """A small seeded reference/spatial pair with cell types that have distinct programs."""
    rng = np.random.default_rng(seed)
    n_all = n_genes + extra_ref_genes
    programs = (
        rng.gamma(1.0, 1.0, size=(n_types, n_all)) * (rng.random((n_types, n_all)) < 0.5) + 0.05
    )
    ref_types = rng.integers(0, n_types, n_ref)
    sp_types = rng.integers(0, n_types, n_sp)
    ref_X = rng.poisson(programs[ref_types] * 5).astype(np.float32)
    sp_X = rng.poisson(programs[sp_types][:, :n_genes] * 3).astype(np.float32)
    genes = [f"Gene{i}" for i in range(n_all)]
    ref = ad.AnnData(
        X=sp.csr_matrix(ref_X) if sparse else ref_X,
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical([f"T{t}" for t in ref_types])},
            index=[f"r{i}" for i in range(n_ref)],
        ),
        var=pd.DataFrame(index=genes),
    )
    spa = ad.AnnData(
        X=sp.csr_matrix(sp_X) if sparse else sp_X,
        obs=pd.DataFrame(
            {"true_type": [f"T{t}" for t in sp_types], "fov": rng.integers(0, 2, n_sp).astype(str)},
            index=[f"s{i}" for i in range(n_sp)],
        ),
        var=pd.DataFrame(index=[g.lower() for g in genes[:n_genes]]),
    )
    spa.obsm["spatial"] = rng.random((n_sp, 2)) * 100
    return ref, spa


def make_store(
    path: Path,
    n_fovs: int = 2,
    seed: int = 0,
    scale: float = 0.5,
    with_table: bool = True,
) -> tuple[Path, ad.AnnData]:
    """A small SpatialData store shaped like a CosMx one, and the reference to map onto it.

    One labels element (``fov<i>_labels``: 24 square cells of 8 x 8 px on a 40 x 60 grid) and one
    RGB image (``fov<i>_image``) per FOV, each with an Identity to its own coordinate system
    ``fov<i>`` and a scale-then-translation to ``global`` (FOV i at x = 100 i, in units of
    ``scale`` per pixel); a table ``table`` annotating the labels (``region_key='fov_labels'``,
    ``instance_key='cell_ID'``, ids 1..24 repeating across FOVs) with seeded expression.
    """
    import spatialdata as sd
    from spatialdata.models import Image2DModel, Labels2DModel, TableModel
    from spatialdata.transformations import Identity, Scale, Sequence, Translation

    rng = np.random.default_rng(seed)
    labels, images, ids, regions = {}, {}, [], []
    for f in range(n_fovs):
        lab = np.zeros((40, 60), dtype=np.int32)
        for k in range(24):
            r, c = divmod(k, 6)
            lab[r * 10 + 1 : r * 10 + 9, c * 10 + 1 : c * 10 + 9] = k + 1
        to_global = Sequence(
            [Scale([scale, scale], axes=("y", "x")), Translation([100 * f, 0], axes=("x", "y"))]
        )
        t = {f"fov{f}": Identity(), "global": to_global}
        labels[f"fov{f}_labels"] = Labels2DModel.parse(lab, dims=("y", "x"), transformations=t)
        img = rng.integers(0, 255, size=(3, 40, 60), dtype=np.uint8)
        images[f"fov{f}_image"] = Image2DModel.parse(
            img, dims=("c", "y", "x"), c_coords=["r", "g", "b"], transformations=dict(t)
        )
        ids += list(range(1, 25))
        regions += [f"fov{f}_labels"] * 24
    n = len(ids)
    ref, spa = make_synthetic(n_ref=80, n_sp=n, seed=seed)
    table = spa.copy()
    table.obs = pd.DataFrame(
        {
            "fov_labels": pd.Categorical(regions),
            "cell_ID": np.asarray(ids, dtype=np.int64),
            "true_type": spa.obs["true_type"].to_numpy(),
        },
        index=[f"{r}_{i}" for r, i in zip(regions, ids, strict=True)],
    )
    del table.obsm["spatial"]
    tables = {}
    if with_table:
        tables["table"] = TableModel.parse(
            table, region=sorted(set(regions)), region_key="fov_labels", instance_key="cell_ID"
        )
    sd.SpatialData(labels=labels, images=images, tables=tables).write(path)
    return path, ref


def tree_digest(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (paths starting with ``skip`` left out)."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(skip):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def make_profile_pair(
    n_types: int = 12,
    per_type: int = 1,
    n_sp: int = 400,
    n_genes: int = 40,
    seed: int = 0,
) -> tuple[ad.AnnData, ad.AnnData]:
    """A reference of a few cells per type (like class profiles or a small deep reference).

    Each reference cell is its type's expression program (no noise); spatial cells are Poisson
    draws of the same programs. The ensemble map averages at least 3 reference cells, so with
    one cell per type it blends types; the Tangram map places single cells and imputes held-out
    genes better (measured in tests/core/maps/test_choose.py).
    """
    rng = np.random.default_rng(seed)
    programs = (
        rng.gamma(0.6, 1.0, size=(n_types, n_genes)) * (rng.random((n_types, n_genes)) < 0.4) + 0.05
    )
    ref_types = np.repeat(np.arange(n_types), per_type)
    sp_types = rng.integers(0, n_types, n_sp)
    genes = [f"G{i}" for i in range(n_genes)]
    ref = ad.AnnData(
        X=(programs[ref_types] * 20).astype(np.float32),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical([f"T{t}" for t in ref_types])},
            index=[f"r{i}" for i in range(len(ref_types))],
        ),
        var=pd.DataFrame(index=genes),
    )
    spa = ad.AnnData(
        X=sp.csr_matrix(rng.poisson(programs[sp_types] * 10).astype(np.float32)),
        obs=pd.DataFrame(
            {"true_type": [f"T{t}" for t in sp_types]}, index=[f"s{i}" for i in range(n_sp)]
        ),
        var=pd.DataFrame(index=genes),
    )
    spa.obsm["spatial"] = rng.random((n_sp, 2)) * 100
    return ref, spa


def size_pair(
    seed: int = 0, counts: bool = True, n_ref: int = 150, n_sp: int = 120, n_genes: int = 20
) -> tuple[ad.AnnData, ad.AnnData]:
    """A pair whose expression is purely proportional to cell size: every cell draws the same
    gene proportions times its own size (Poisson counts, or non-integer values with 5 % noise)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(n_genes))

    def cells(n: int, prefix: str) -> ad.AnnData:
        size = rng.lognormal(np.log(200), 0.6, n)
        lam = size[:, None] * p[None, :]
        X = rng.poisson(lam) if counts else lam * rng.lognormal(0, 0.05, lam.shape)
        return ad.AnnData(
            X=X.astype(np.float32),
            obs=pd.DataFrame(index=[f"{prefix}{i}" for i in range(n)]),
            var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]),
        )

    ref, spa = cells(n_ref, "r"), cells(n_sp, "s")
    spa.obsm["spatial"] = rng.random((n_sp, 2)) * 100
    return ref, spa


def make_shapes_store(tmp_path: Path, kind: str, n: int = 4) -> Path:
    """A store of ``n`` cells as shapes (``"polygons"`` or ``"circles"``, ids 100..; x scaled by
    2 to ``global``) and a table of all but the first, in reverse order."""
    import anndata as ad
    import geopandas as gpd
    import spatialdata as sd
    from shapely.geometry import Point, Polygon
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Scale

    index = np.arange(n) + 100
    if kind == "circles":
        geoms = [Point(10.0 * i, 5.0) for i in range(n)]
        gdf = gpd.GeoDataFrame({"geometry": geoms, "radius": np.arange(n) + 1.0}, index=index)
    else:
        geoms = [Polygon([(10 * i, 0), (10 * i + 4, 0), (10 * i + 4, 3)]) for i in range(n)]
        gdf = gpd.GeoDataFrame({"geometry": geoms}, index=index)
    shapes = ShapesModel.parse(gdf, transformations={"global": Scale([2.0, 2.0], axes=("x", "y"))})
    ids = index[::-1][: n - 1]  # the table holds all cells but the first, in another order
    table = ad.AnnData(
        np.ones((len(ids), 2), np.float32),
        obs=pd.DataFrame(
            {"region": pd.Categorical(["cells"] * len(ids)), "cell_id": ids},
            index=[f"c{i}" for i in ids],
        ),
    )
    table = TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    path = tmp_path / f"{kind}.zarr"
    sd.SpatialData(shapes={"cells": shapes}, tables={"table": table}).write(path)
    return path
