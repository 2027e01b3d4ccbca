"""SpatialData stores in and out: reading a cell table in a coordinate system, writing results back."""

from __future__ import annotations

import os
import shutil
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _data import make_store, tree_digest
from napari_spatial_impute._errors import InputError, InputWarning
from napari_spatial_impute.io.sdata import describe_store, label_centroids, open_store, read_spatial
from napari_spatial_impute.io.sdata_write import check_table_target

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def store_template(tmp_path_factory):
    path, ref = make_store(tmp_path_factory.mktemp("store") / "cells.zarr")
    return path, ref


@pytest.fixture
def store(store_template, tmp_path):
    src, ref = store_template
    dst = tmp_path / "cells.zarr"
    shutil.copytree(src, dst)
    return dst, ref


def _label_at(sdata, element: str, cs_xy: np.ndarray, cs: str) -> np.ndarray:
    """Label value under each (x, y) of ``cs``, through the inverse of the element's transform."""
    from spatialdata.transformations import get_transformation

    m = get_transformation(sdata[element], to_coordinate_system=cs).to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y")
    )
    inv = np.linalg.inv(np.asarray(m))
    px = cs_xy @ inv[:2, :2].T + inv[:2, 2]
    arr = np.asarray(sdata[element].data)
    col, row = np.floor(px[:, 0]).astype(int), np.floor(px[:, 1]).astype(int)
    return arr[row, col]


@pytest.mark.parametrize("cs", ["global", "fov1"])
def test_cells_sit_on_their_own_label(store, cs):
    """Each cell's coordinates fall on its own label in that coordinate system (pixel test)."""
    path, _ = store
    adata = read_spatial(path, coordinate_system=cs)
    sdata = open_store(path)
    assert adata.uns["spatialdata"]["coordinate_system"] == cs
    for region in adata.obs["fov_labels"].unique():
        rows = (adata.obs["fov_labels"] == region).to_numpy()
        got = _label_at(sdata, region, adata.obsm["spatial"][rows], cs)
        np.testing.assert_array_equal(got, adata.obs["cell_ID"].to_numpy()[rows])
    if cs == "fov1":  # a per-FOV coordinate system holds that FOV's cells only
        assert set(adata.obs["fov_labels"]) == {"fov1_labels"}
        assert adata.n_obs == 24
    else:
        assert adata.n_obs == 48
        assert sorted(adata.obs["fov"].cat.categories) == ["fov0", "fov1"]  # from the region
        # FOV 1 lies 100 units right of FOV 0 in global
        x = adata.obsm["spatial"][:, 0]
        assert x[adata.obs["fov"] == "fov1"].min() >= 100 > x[adata.obs["fov"] == "fov0"].max()


def test_default_choices_and_description(store):
    path, _ = store
    info = describe_store(open_store(path))
    assert info.coordinate_systems == ("fov0", "fov1", "global")
    (table,) = info.cell_tables
    assert table.regions == ("fov0_labels", "fov1_labels")
    assert (table.region_key, table.instance_key) == ("fov_labels", "cell_ID")
    adata = read_spatial(path)
    assert adata.uns["spatialdata"]["coordinate_system"] == "global"
    assert adata.uns["spatialdata"]["table"] == "table"


@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(1, 9), st.integers(1, 9)),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([0, 2_000_000_000]),
)
@settings(max_examples=40, deadline=None)
def test_label_centroids_blockwise_equal_whole(rects, offset):
    """Centroids read block by block equal those of the whole image (blocks of 7 pixels here),
    for small ids (counted) and large ones (sorted)."""
    import dask.array as da

    lab = np.zeros((40, 40), dtype=np.int64)
    for k, (r, c, h, w) in enumerate(rects, start=1):
        lab[r : r + h, c : c + w] = k + offset
    got = label_centroids(da.from_array(lab, chunks=7))
    ids = [k for k in np.unique(lab) if k]
    assert list(got.index) == ids
    for k in ids:
        rr, cc = np.nonzero(lab == k)
        assert got.loc[k, "y"] == pytest.approx(rr.mean() + 0.5)
        assert got.loc[k, "x"] == pytest.approx(cc.mean() + 0.5)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_bad_stores_get_one_line(store, tmp_path):
    path, _ = store
    with pytest.raises(InputError) as e:
        read_spatial(path, coordinate_system="nowhere")
    assert "fov0, fov1, global" in _one_line(e)
    with pytest.raises(InputError) as e:
        read_spatial(path, table="nope")
    assert "its tables are table" in _one_line(e)
    with pytest.raises(InputError) as e:
        read_spatial(tmp_path / "missing.zarr")
    assert "does not exist" in _one_line(e)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(InputError) as e:
        read_spatial(plain)
    assert "not a SpatialData store" in _one_line(e)
    bare, _ = make_store(tmp_path / "bare.zarr", with_table=False)
    with pytest.raises(InputError) as e:
        read_spatial(bare)
    assert "has no tables" in _one_line(e)


def _store_with_table(tmp_path, table: ad.AnnData, shapes=None, name="s.zarr"):
    import spatialdata as sd

    path = tmp_path / name
    sd.SpatialData(shapes=shapes or {}, tables={"table": table}).write(path)
    return path


def _circles(n: int, empty: bool = False):
    import geopandas as gpd
    from shapely.geometry import Point
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Scale

    geoms = [None if empty else Point(10.0 * i, 5.0) for i in range(n)]
    gdf = gpd.GeoDataFrame({"geometry": geoms, "radius": np.ones(n)}, index=np.arange(n) + 100)
    if empty:
        return gdf
    return ShapesModel.parse(gdf, transformations={"global": Scale([2.0, 2.0], axes=("x", "y"))})


def _table(ids, region="cells", annotate=True):
    from spatialdata.models import TableModel

    n = len(ids)
    t = ad.AnnData(
        np.ones((n, 3), np.float32),
        obs=pd.DataFrame(
            {"region": pd.Categorical([region] * n), "cell_id": np.asarray(ids)},
            index=[f"c{i}" for i in range(n)],
        ),
    )
    if annotate:
        t = TableModel.parse(t, region=region, region_key="region", instance_key="cell_id")
    return t


def test_circles_are_placed_by_their_centres(tmp_path):
    path = _store_with_table(tmp_path, _table([102, 100, 101]), {"cells": _circles(3)})
    adata = read_spatial(path)
    np.testing.assert_allclose(adata.obsm["spatial"], [[40, 10], [0, 10], [20, 10]])


def test_table_problems_get_one_line(tmp_path):
    path = _store_with_table(tmp_path, _table([1, 2, 3]), {"cells": _circles(3)}, "ids.zarr")
    with pytest.raises(InputError) as e:
        read_spatial(path)
    assert "no instance id" in _one_line(e) and "cell_id" in str(e.value)
    path = _store_with_table(
        tmp_path, _table([100, 101], annotate=False), {"cells": _circles(2)}, "plain.zarr"
    )
    with pytest.raises(InputError) as e:
        read_spatial(path)
    assert "does not say which cells it annotates" in _one_line(e)


def test_shapes_without_geometry(tmp_path):
    import spatialdata as sd

    path = _store_with_table(tmp_path, _table([100, 101]), {"cells": _circles(2)})
    sdata = sd.read_zarr(path)
    gdf = sdata.shapes["cells"].copy()
    gdf["geometry"] = None
    sdata.shapes.data["cells"] = gdf  # as a store whose shapes lost their geometry
    with pytest.raises(InputError) as e:
        read_spatial(sdata)
    assert "has no geometry" in _one_line(e)


def test_some_ids_missing_are_left_out_with_a_warning(tmp_path):
    path = _store_with_table(tmp_path, _table([100, 101, 999]), {"cells": _circles(2)})
    with pytest.warns(InputWarning, match="1 cells"):
        adata = read_spatial(path)
    assert adata.n_obs == 2


# --------------------------------------------------------------------------- writing back
@pytest.fixture
def mapped(store):
    import napari_spatial_impute as nsi

    path, ref = store
    spatial = read_spatial(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = nsi.map_cells_to_space(ref, spatial, cluster_key="cell_type")
    return path, result


def test_results_table_joins_the_cells_and_nothing_else_changes(mapped):
    import spatialdata as sd
    from spatialdata.models import get_table_keys

    from napari_spatial_impute.core.export import write_result_to_store

    path, result = mapped
    before = tree_digest(path, skip=("zarr.json",))
    root_before = _root_entries(path)
    table = write_result_to_store(result, path)
    after = tree_digest(path, skip=("zarr.json", "tables/spatial_impute"))
    assert after == before  # every other file byte for byte
    root_after = _root_entries(path)
    assert {k: v for k, v in root_after.items() if "spatial_impute" not in k} == root_before
    sdata = sd.read_zarr(path)
    assert set(sdata.tables) == {"table", "spatial_impute"}
    written = sdata.tables["spatial_impute"]
    assert get_table_keys(written) == (["fov0_labels", "fov1_labels"], "fov_labels", "cell_ID")
    np.testing.assert_allclose(written.X, table.X)
    assert list(written.uns["cell_type_predicted_colors"]) == ["#1f77b4", "#ff7f0e", "#2ca02c"]
    assert "interval_90_halfwidth" in written.layers
    assert written.obsm["cluster_probabilities"].shape[1] == 3
    elements, joined = sd.join_spatialelement_table(
        sdata,
        spatial_element_names=["fov0_labels", "fov1_labels"],
        table_name="spatial_impute",
        how="left",
    )
    assert joined.n_obs == 48 and set(elements) == {"fov0_labels", "fov1_labels"}


def _root_entries(path) -> dict:
    import json

    meta = json.loads((path / "zarr.json").read_text())
    return meta.get("consolidated_metadata", {}).get("metadata", {})


def test_chunked_write_equals_whole(mapped):
    import spatialdata as sd

    from napari_spatial_impute.core.export import write_result_to_store

    path, result = mapped
    write_result_to_store(result, path, name="whole")
    write_result_to_store(result, path, name="chunked", chunk_genes=4)
    sdata = sd.read_zarr(path)
    a, b = sdata.tables["whole"], sdata.tables["chunked"]
    np.testing.assert_array_equal(np.asarray(a.X), np.asarray(b.X))
    np.testing.assert_array_equal(
        a.layers["interval_90_halfwidth"], b.layers["interval_90_halfwidth"]
    )


def test_refusals_leave_the_store_untouched(mapped, tmp_path):
    from napari_spatial_impute.core.export import write_result_to_store

    path, result = mapped
    write_result_to_store(result, path)
    before = tree_digest(path)
    for kwargs, words in (
        ({}, "replace it (Replace, --overwrite)"),
        ({"name": "table"}, "did not write"),
        ({"name": "fov0_image"}, "already has an image element"),
        ({"name": "bad/name"}, "not a valid element name"),
        ({"name": "other", "out": path}, "exists"),
        ({"name": "other", "out": tmp_path / "x.h5ad"}, "must end in .zarr"),
    ):
        with pytest.raises(InputError) as e:
            write_result_to_store(result, path, **kwargs)
        assert words in _one_line(e), kwargs
    assert tree_digest(path) == before


def test_overwrite_replaces_only_our_table(mapped):
    import spatialdata as sd

    from napari_spatial_impute.core.export import write_result_to_store

    path, result = mapped
    write_result_to_store(result, path, genes=["Gene0"])
    write_result_to_store(result, path, overwrite=True, genes=["Gene1", "Gene2"])
    assert list(sd.read_zarr(path).tables["spatial_impute"].var_names) == ["Gene1", "Gene2"]


def test_copy_leaves_the_input_untouched(mapped, tmp_path):
    import spatialdata as sd

    from napari_spatial_impute.core.export import write_result_to_store

    path, result = mapped
    before = tree_digest(path)
    out = tmp_path / "copy.zarr"
    write_result_to_store(result, path, out=out)
    assert tree_digest(path) == before
    assert set(sd.read_zarr(out).tables) == {"table", "spatial_impute"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_read_only_store_is_refused(mapped, monkeypatch):
    """Refused before any work (read-only folders; as root, where they are writable, simulated)."""
    import napari_spatial_impute.io.sdata_write as sw

    path, _ = mapped
    if os.geteuid() == 0:
        monkeypatch.setattr(sw.os, "access", lambda p, mode: mode != os.W_OK)
    modes = {p: p.stat().st_mode for p in (path, path / "tables")}
    try:
        for p in modes:
            p.chmod(0o555)
        with pytest.raises(InputError) as e:
            check_table_target(path, "spatial_impute")
        assert "not writable" in _one_line(e) and "--out" in str(e.value)
    finally:
        for p, m in modes.items():
            p.chmod(m)


def test_failed_write_leaves_nothing(mapped, monkeypatch):
    """A failure after the table was renamed in (here: listing it in the consolidated metadata)
    removes it; no temporaries."""
    import napari_spatial_impute.io.sdata_write as sw
    from napari_spatial_impute.core.export import write_result_to_store

    path, result = mapped
    before = tree_digest(path)

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(sw, "merged_root", boom)
    with pytest.raises(OSError):
        write_result_to_store(result, path)
    assert tree_digest(path) == before
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_only_the_chosen_table_is_read(mapped, monkeypatch):
    """A store's results tables may be many GB: describing the store reads no table's matrix,
    and reading the cells reads only their table."""
    from napari_spatial_impute.core.export import write_result_to_store

    path, result = mapped
    write_result_to_store(result, path)
    read = []
    real = ad.read_zarr
    monkeypatch.setattr(ad, "read_zarr", lambda p, *a, **k: read.append(p.name) or real(p, *a, **k))
    info = describe_store(open_store(path))
    assert read == []
    assert {t.name: t.is_result for t in info.tables} == {"spatial_impute": True, "table": False}
    assert info.table("spatial_impute").mapped_in == "global"
    assert info.table("spatial_impute").n_obs == 48
    read_spatial(path)
    assert read == ["table"]


def test_file_open_shows_the_results_table(mapped, make_napari_viewer_proxy):
    """A store with our results opens as the result (imputed genes for Explore), over its rasters."""
    from napari_spatial_impute.core.export import write_result_to_store
    from napari_spatial_impute.plugin.sync import viewer_model

    path, result = mapped
    write_result_to_store(result, path)
    viewer = make_napari_viewer_proxy()
    viewer.open(str(path), plugin="napari-spatial-impute")
    model = viewer_model(viewer)
    assert model.result is not None and model.result.n_vars == 15
    assert model.result.uns["spatialdata"]["table"] == "spatial_impute"
    kinds = [type(layer).__name__ for layer in viewer.layers]
    assert kinds[:2] == ["Image", "Labels"] and kinds[-1] == "Points"


def test_unwritable_staging_folder_is_refused(mapped, monkeypatch):
    import napari_spatial_impute.io.sdata_write as sw

    path, _ = mapped
    parent = str(path.resolve().parent)
    monkeypatch.setattr(sw.os, "access", lambda p, mode: str(p) != parent)
    with pytest.raises(InputError) as e:
        check_table_target(path, "spatial_impute")
    assert "is not writable (the results table is staged beside the store)" in _one_line(e)


def test_more_bad_stores_get_one_line(store, tmp_path):
    import zarr

    path, _ = store
    zarr.open_group(str(path / "tables"), mode="r+").create_group("junk")
    with pytest.raises(InputError) as e:
        read_spatial(path, table="table")
    assert "table 'junk' of the store cannot be read" in _one_line(e)
    dup = _store_with_table(tmp_path, _table([100, 101]), {"cells": _circles(2)}, "dup.zarr")
    import spatialdata as sd

    sdata = sd.read_zarr(dup)
    gdf = sdata.shapes["cells"]
    gdf.index = [100, 100]
    with pytest.raises(InputError) as e:
        read_spatial(sdata)
    assert "repeated cell ids" in _one_line(e)


def test_float_label_images():
    lab = np.zeros((10, 10), dtype=np.float32)
    lab[2:4, 2:4] = 7
    got = label_centroids(lab)
    assert list(got.index) == [7] and got.loc[7, "x"] == pytest.approx(3.0)  # (2 + 3) / 2 + 0.5
    lab[5, 5] = 2.5
    with pytest.raises(InputError) as e:
        label_centroids(lab)
    assert "fractional" in _one_line(e)
