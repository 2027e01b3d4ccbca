"""Damaged or ambiguous SpatialData stores: one line before any mapping work, never a traceback;
cells left out of the coordinate system counted in one warning; what is read writes back."""

from __future__ import annotations

import shutil
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from _data import make_store, tree_digest
from napari_spatial_impute._errors import InputError, InputWarning
from napari_spatial_impute.cli import main
from napari_spatial_impute.core.export import store_table
from napari_spatial_impute.io.sdata import read_spatial

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: Every stored chunk of the test stores is zstd-compressed; a frame starts with this.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    folder = tmp_path_factory.mktemp("template")
    path, ref = make_store(folder / "cells.zarr")
    ref_path = folder / "reference.h5ad"
    ref.write_h5ad(ref_path)
    return path, ref_path


@pytest.fixture
def store(template, tmp_path):
    src, ref_path = template
    dst = tmp_path / "cells.zarr"
    shutil.copytree(src, dst)
    return dst, ref_path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _map(store, ref_path, capsys, *extra):
    args = ["map", "-r", ref_path, "-s", store, "--impute", "Gene0", *extra]
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _refused_before_mapping(code, out, err, store, before):
    """Exit 2 with one error line; nothing mapped, the store as it was."""
    assert code == 2
    assert err.startswith("napari-spatial-impute: error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and "map:" not in out
    assert tree_digest(store) == before


def _rewrite_table(path, change):
    """Change the stored cell table in memory and write it again with spatialdata (whose writer
    does not check instance ids: stores with repeated ids exist)."""
    import spatialdata as sd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sd.read_zarr(path)
        change(sdata.tables["table"])
        sdata.delete_element_from_disk("table")
        sdata.write_element("table")


# --------------------------------------------------------------------------- damaged stores
@given(garbage=st.binary(min_size=1, max_size=64).filter(lambda b: not b.startswith(ZSTD_MAGIC)))
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_corrupt_table_chunk_names_the_array(store, garbage):
    path, _ = store
    chunk = path / "tables" / "table" / "X" / "data" / "c" / "0"
    kept = chunk.read_bytes()
    chunk.write_bytes(garbage)
    try:
        with pytest.raises(InputError) as e:
            read_spatial(path)
    finally:
        chunk.write_bytes(kept)
    msg = _one_line(e)
    assert "is damaged: table 'table' cannot be read (tables/table/X/data/c/0: " in msg
    assert "restore the store from a backup or write it again" in msg


def test_corrupt_table_chunk_via_the_cli(store, capsys):
    path, ref_path = store
    (path / "tables" / "table" / "obs" / "cell_ID" / "c" / "0").write_bytes(b"not a chunk" * 9)
    before = tree_digest(path)
    code, out, err = _map(path, ref_path, capsys)
    _refused_before_mapping(code, out, err, path, before)
    assert "table 'table' cannot be read (tables/table/obs/cell_ID/c/0: " in err


def test_corrupt_table_metadata_names_the_file(store):
    path, _ = store
    (path / "tables" / "table" / "X" / "indptr" / "zarr.json").write_text("{garbage")
    with pytest.raises(InputError) as e:
        read_spatial(path)
    assert "table 'table' cannot be read (tables/table/X/indptr/zarr.json: " in _one_line(e)


def test_corrupt_labels_chunk_is_refused_before_mapping(store, capsys, tmp_path):
    """Label centroids are computed while the store is read: the damaged chunk is found there,
    before the mapping."""
    path, ref_path = store
    (path / "labels" / "fov1_labels" / "s0" / "c" / "0" / "0").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(InputError) as e:
        read_spatial(path)
    msg = _one_line(e)
    assert "labels element 'fov1_labels' cannot be read (labels/fov1_labels/s0/c/0/0: " in msg
    assert "restore the store from a backup" in msg
    before = tree_digest(path)
    code, out, err = _map(path, ref_path, capsys)
    _refused_before_mapping(code, out, err, path, before)
    assert "labels element 'fov1_labels' cannot be read" in err
    # a coordinate system without the damaged FOV maps as before
    out = tmp_path / "r.h5ad"
    code, _, err = _map(path, ref_path, capsys, "--coordinate-system", "fov0", "-o", out)
    assert code == 0, err


# --------------------------------------------------------------------------- repeated ids
def test_repeated_instance_ids_are_refused_at_read(store, capsys):
    path, ref_path = store

    def repeat(table):
        ids = table.obs["cell_ID"].to_numpy().copy()
        ids[[1, 2, 30]] = ids[[0, 0, 29]]  # cell 1 of fov0 on 3 rows, cell 6 of fov1 on 2
        table.obs["cell_ID"] = ids

    _rewrite_table(path, repeat)
    with pytest.raises(InputError) as e:
        read_spatial(path)
    msg = _one_line(e)
    assert "repeats instance ids within a region (3 rows repeated" in msg
    assert "cell_ID 1 of 'fov0_labels' is on 3 rows" in msg and "drop or renumber" in msg
    before = tree_digest(path)
    code, out, err = _map(path, ref_path, capsys)
    _refused_before_mapping(code, out, err, path, before)  # was: after the mapping, a traceback


def test_repeated_cell_names_are_refused_at_read(store):
    path, _ = store

    def rename(table):
        names = table.obs_names.to_numpy().copy()
        names[5] = names[4]
        table.obs_names = names

    _rewrite_table(path, rename)
    with pytest.raises(InputError) as e:
        read_spatial(path)
    msg = _one_line(e)
    assert "repeats cell names (obs_names; 1 row repeated, e.g. 'fov0_labels_5')" in msg
    assert "obs_names_make_unique" in msg


def test_a_region_listed_twice_maps_and_writes_back(store, capsys):
    """A region list naming an element twice is one region (was: the results table named it
    twice); the store maps end to end and takes its results table back."""
    import spatialdata as sd
    from spatialdata.models import get_table_keys

    path, ref_path = store

    def twice(table):
        table.uns["spatialdata_attrs"]["region"] = ["fov0_labels", "fov1_labels", "fov0_labels"]

    _rewrite_table(path, twice)
    adata = read_spatial(path)
    assert adata.uns["spatialdata"]["regions"] == ["fov0_labels", "fov1_labels"]
    code, _, err = _map(path, ref_path, capsys)
    assert code == 0, err
    written = sd.read_zarr(path).tables["spatial_impute"]
    assert get_table_keys(written) == (["fov0_labels", "fov1_labels"], "fov_labels", "cell_ID")
    assert written.n_obs == 48


def test_an_element_name_of_two_kinds_is_refused(tmp_path):
    """A region named by both a labels and a shapes element: spatialdata reads one of them and
    drops the other without a word."""
    import geopandas as gpd
    import spatialdata as sd
    from shapely.geometry import Point
    from spatialdata.models import Labels2DModel, ShapesModel, TableModel

    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(
            {"geometry": [Point(1, 1), Point(5, 5)], "radius": [1.0, 1.0]}, index=[1, 2]
        )
    )
    table = ad.AnnData(
        np.ones((2, 3), np.float32),
        obs=pd.DataFrame(
            {"region": pd.Categorical(["cells"] * 2), "cid": [1, 2]}, index=["a", "b"]
        ),
    )
    table = TableModel.parse(table, region="cells", region_key="region", instance_key="cid")
    path = tmp_path / "s.zarr"
    sd.SpatialData(shapes={"cells": shapes}, tables={"table": table}).write(path)
    lab = np.zeros((10, 10), np.int32)
    lab[2:4, 2:4], lab[6:8, 6:8] = 1, 2
    other = tmp_path / "l.zarr"
    sd.SpatialData(labels={"cells": Labels2DModel.parse(lab, dims=("y", "x"))}).write(other)
    shutil.copytree(other / "labels", path / "labels")
    with pytest.raises(InputError) as e:
        read_spatial(path)
    assert "has labels and shapes elements both named 'cells'" in _one_line(e)


def _shapes(n: int, systems: tuple[str, ...] = ("global",)):
    import geopandas as gpd
    from shapely.geometry import Point
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    gdf = gpd.GeoDataFrame(
        {"geometry": [Point(float(i), 1.0) for i in range(n)], "radius": np.ones(n)},
        index=np.arange(n),
    )
    return ShapesModel.parse(gdf, transformations={c: Identity() for c in systems})


def _sdata(rows, elements, annotated=None, ids_dtype=np.int64):
    """An in-memory SpatialData: shapes ``elements`` ({name: systems}, 6 cells each) and a table
    of ``rows`` ((region, id) pairs) annotating ``annotated`` (default every element). The table
    is annotated after it was added, as a store written without spatialdata's checks."""
    import spatialdata as sd

    regions = [r for r, _ in rows]
    table = ad.AnnData(
        np.ones((len(rows), 2), np.float32),
        obs=pd.DataFrame(
            {"region": pd.Categorical(regions), "cid": np.asarray([i for _, i in rows], ids_dtype)},
            index=[f"c{k}" for k in range(len(rows))],
        ),
    )
    shapes = {name: _shapes(6, systems) for name, systems in elements.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sd.SpatialData(shapes=shapes, tables={"table": table})
    sdata.tables["table"].uns["spatialdata_attrs"] = {
        "region": list(annotated or elements),
        "region_key": "region",
        "instance_key": "cid",
    }
    return sdata


def _writes_back(adata: ad.AnnData) -> ad.AnnData:
    """The results table the write-back would build (spatialdata's TableModel.parse) for cells
    read from an in-memory SpatialData (given a store path, which it has not)."""
    adata.uns["spatialdata"]["store"] = "memory.zarr"
    return store_table(adata)


@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 5)), min_size=1, max_size=10
    ),
    as_float=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_what_is_read_writes_back(rows, as_float):
    """Repeated (region, id) pairs are refused at read, naming how many; every table that is read
    passes the write-back's check (spatialdata's TableModel.parse in store_table), whole ids
    stored as floats included (was: a TypeError after the mapping)."""
    sdata = _sdata(rows, {"a": ("global",), "b": ("global",)}, ids_dtype=float if as_float else int)
    repeated = len(rows) - len(set(rows))
    if repeated:
        with pytest.raises(InputError) as e:
            read_spatial(sdata)
        assert f"repeats instance ids within a region ({repeated} row" in _one_line(e)
        return
    adata = read_spatial(sdata)
    assert adata.n_obs == len(rows)
    np.testing.assert_array_equal(adata.obsm["spatial"][:, 0], [i for _, i in rows])
    table = _writes_back(adata)
    assert sorted(table.uns["spatialdata_attrs"]["region"]) == sorted({r for r, _ in rows})


def test_empty_instance_ids_are_refused(tmp_path):
    sdata = _sdata([("a", 0), ("a", 1), ("a", 2)], {"a": ("global",)}, ids_dtype=float)
    sdata.tables["table"].obs.loc["c1", "cid"] = np.nan
    with pytest.raises(InputError) as e:
        read_spatial(sdata)
    assert "has 1 row without an instance id (cid empty, e.g. row 'c1')" in _one_line(e)


# --------------------------------------------------------------------------- cells left out
def _only_per_fov(path):
    """The store's elements placed in their FOV's coordinate system only (no 'global')."""
    import spatialdata as sd
    from spatialdata.transformations import remove_transformation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sd.read_zarr(path)
        for name in ("fov0_labels", "fov0_image", "fov1_labels", "fov1_image"):
            remove_transformation(sdata[name], "global")
            sdata.write_transformations(name)


def test_cells_outside_the_default_coordinate_system_are_counted(store, capsys):
    """Labels in per-FOV coordinate systems only, no --coordinate-system: the default (fov0)
    holds half of the cells; the other half is named in one warning (was: without a word)."""
    path, ref_path = store
    _only_per_fov(path)
    with pytest.warns(InputWarning) as caught:
        adata = read_spatial(path)
    assert adata.n_obs == 24 and adata.uns["spatialdata"]["coordinate_system"] == "fov0"
    (message,) = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    assert message.startswith("24 of the 48 cells of table 'table' are left out: their region ")
    assert "(fov1_labels) is not placed in coordinate system 'fov0'" in message
    assert "--coordinate-system fov1" in message and "the store has fov0, fov1" in message
    code, _, err = _map(path, ref_path, capsys)
    assert code == 0, err
    assert "napari-spatial-impute: warning: 24 of the 48 cells of table 'table' are left" in err


def test_a_chosen_per_fov_system_names_the_one_holding_every_cell(store):
    path, _ = store
    with pytest.warns(InputWarning, match=r"to map every cell choose 'global'") as caught:
        adata = read_spatial(path, coordinate_system="fov1")
    assert adata.n_obs == 24
    assert sum(issubclass(w.category, InputWarning) for w in caught) == 1


def test_no_cell_in_the_coordinate_system_is_an_error():
    """A coordinate system that holds only a region without cells (a table written before
    spatialdata checked that each region has rows): one line, not an empty map."""
    sdata = _sdata([("a", 0), ("a", 1)], {"a": ("cs_a", "global"), "b": ("cs_b",)})
    with pytest.raises(InputError) as e:
        read_spatial(sdata, coordinate_system="cs_b")
    msg = _one_line(e)
    assert msg.startswith("no cell to map: 2 of the 2 cells of table 'table' are left out")
    assert "their region (a) is not placed in coordinate system 'cs_b'" in msg


def test_rows_of_regions_the_table_does_not_annotate_are_counted():
    sdata = _sdata([("a", 0), ("a", 1), ("b", 2)], {"a": ("global",), "b": ("global",)})
    sdata.tables["table"].uns["spatialdata_attrs"]["region"] = ["a"]
    with pytest.warns(InputWarning, match=r"1 of the 3 cells .* is left out: 'table' does not"):
        adata = read_spatial(sdata)
    assert list(adata.obs_names) == ["c0", "c1"]
    _writes_back(adata)


@given(
    counts=st.lists(st.integers(0, 4), min_size=3, max_size=3),
    in_global=st.lists(st.booleans(), min_size=3, max_size=3),
)
@settings(max_examples=30, deadline=None)
def test_left_out_cells_are_never_silent(counts, in_global):
    """Regions a, b, c (each in its own system, some in 'global'): the cells of the regions
    outside 'global' are counted in one warning; none left is an error."""
    names = ["a", "b", "c"]
    assume(any(in_global) and sum(counts))
    elements = {
        n: (f"cs_{n}", "global") if g else (f"cs_{n}",)
        for n, g in zip(names, in_global, strict=True)
    }
    rows = [(n, i) for n, k in zip(names, counts, strict=True) for i in range(k)]
    away = sum(k for k, g in zip(counts, in_global, strict=True) if not g)
    kept = len(rows) - away
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if kept == 0:
            with pytest.raises(InputError) as e:
                read_spatial(_sdata(rows, elements), coordinate_system="global")
            assert _one_line(e).startswith(f"no cell to map: {away} of the {away} cells")
            return
        adata = read_spatial(_sdata(rows, elements), coordinate_system="global")
    assert adata.n_obs == kept
    said = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    if away:
        (message,) = said
        assert message.startswith(f"{away} of the {len(rows)} cells of table 'table'")
    else:
        assert said == []
