"""The command line with SpatialData stores: map a real CosMx store, write back, refuse bad input."""

from __future__ import annotations

import shutil

import anndata as ad
import numpy as np
import pytest

from _data import make_store, tree_digest
from napari_spatial_impute.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def cosmx_store(shared_data, tmp_path_factory):
    from napari_spatial_impute.io.demo_stores import build_cosmx_lung_store

    return build_cosmx_lung_store(shared_data, tmp_path_factory.mktemp("cosmx") / "lung.zarr")


@pytest.fixture(scope="module")
def cosmx_reference(shared_data, tmp_path_factory):
    """A cell split of the CosMx table: every other cell, all 980 genes, no coordinates."""
    cells = ad.read_h5ad(shared_data / "cosmx_lung" / "spatial.h5ad")
    ref = cells[::2].copy()
    del ref.obsm["spatial"]
    path = tmp_path_factory.mktemp("ref") / "reference.h5ad"
    ref.write_h5ad(path)
    return path


def _run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_map_real_cosmx_store_writes_a_table_spatialdata_reads(
    cosmx_store, cosmx_reference, tmp_path, capsys
):
    import spatialdata as sd
    from spatialdata.models import get_table_keys

    store = tmp_path / "lung.zarr"
    shutil.copytree(cosmx_store, store)
    before = tree_digest(store, skip=("zarr.json",))
    code, out, err = _run(
        ["map", "-r", cosmx_reference, "-s", store, "--impute", "CD74,EPCAM"],
        capsys,
    )
    assert code == 0, err
    assert "to table 'spatial_impute' of" in out
    assert tree_digest(store, skip=("zarr.json", "tables/spatial_impute")) == before
    sdata = sd.read_zarr(store)
    table = sdata.tables["spatial_impute"]
    assert get_table_keys(table) == (["fov2_labels", "fov3_labels"], "fov_labels", "cell_ID")
    assert list(table.var_names) == ["CD74", "EPCAM"]
    cells = sdata.tables["table"]
    assert set(zip(table.obs["fov_labels"], table.obs["cell_ID"], strict=True)) == set(
        zip(cells.obs["fov_labels"], cells.obs["cell_ID"], strict=True)
    )
    # imputed values follow the measured ones (half of the cells are the reference)
    measured = np.asarray(cells[table.obs_names, "EPCAM"].X.todense()).ravel()
    assert np.corrcoef(measured, np.asarray(table[:, "EPCAM"].X).ravel())[0, 1] > 0.5
    # a second run without --overwrite is refused, with it replaces the table
    code, _, err = _run(["map", "-r", cosmx_reference, "-s", store], capsys)
    assert code == 2 and "--overwrite" in err and "\n" not in err.strip()


def test_per_fov_coordinate_system_and_copy(cosmx_store, cosmx_reference, tmp_path, capsys):
    import spatialdata as sd

    out = tmp_path / "copy.zarr"
    before = tree_digest(cosmx_store)
    code, stdout, err = _run(
        ["map", "-r", cosmx_reference, "-s", cosmx_store, "--coordinate-system", "fov3"]
        + ["--impute", "CD74", "--out", out],
        capsys,
    )
    assert code == 0, err
    assert tree_digest(cosmx_store) == before  # the input store is only read
    table = sd.read_zarr(out).tables["spatial_impute"]
    assert set(table.obs["fov_labels"]) == {"fov3_labels"}
    assert table.n_obs == 53


def test_h5ad_output_from_a_store(cosmx_store, cosmx_reference, tmp_path, capsys):
    out = tmp_path / "r.h5ad"
    code, _, err = _run(
        ["map", "-r", cosmx_reference, "-s", cosmx_store, "--impute", "CD74", "-o", out], capsys
    )
    assert code == 0, err
    result = ad.read_h5ad(out)
    assert result.uns["spatialdata"]["table"] == "table"
    assert result.obsm["spatial"].shape == (120, 2)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--coordinate-system", "fov9"], "fov2, fov3, global"),
        (["--table", "cells"], "its tables are table"),
        (["--out", "x.zarr", "--result-table", "table"], "did not write"),
        (["--result-table", "fov2_image"], "already has an image element"),
    ],
)
def test_bad_store_input_exits_2_with_one_line(
    cosmx_store, cosmx_reference, tmp_path, capsys, extra, words, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    before = tree_digest(cosmx_store)
    code, out, err = _run(["map", "-r", cosmx_reference, "-s", cosmx_store, *extra], capsys)
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1
    assert tree_digest(cosmx_store) == before
    assert not list(tmp_path.iterdir())  # nothing written


def test_store_without_tables_and_read_only_store(tmp_path, capsys, monkeypatch):
    import napari_spatial_impute.io.sdata_write as sw

    bare, ref = make_store(tmp_path / "bare.zarr", with_table=False)
    ref_path = tmp_path / "ref.h5ad"
    ref.write_h5ad(ref_path)
    code, _, err = _run(["map", "-r", ref_path, "-s", bare], capsys)
    assert code == 2 and "has no tables" in err
    store, _ = make_store(tmp_path / "cells.zarr")
    monkeypatch.setattr(sw.os, "access", lambda p, mode: False)
    code, _, err = _run(["map", "-r", ref_path, "-s", store], capsys)
    assert code == 2 and "not writable" in err and "--out new.zarr" in err


def test_iss_ca1_store_maps_class_profiles_and_writes_back(shared_data, tmp_path, capsys):
    """The real ISS CA1 store (label image + table) against its 71 class profiles: the most
    likely class lands in the store, annotating the same labels, with the viewer's colours."""
    import spatialdata as sd
    from spatialdata.models import get_table_keys

    from napari_spatial_impute.io.demo_stores import build_iss_ca1_store

    store = build_iss_ca1_store(shared_data, tmp_path / "ca1.zarr")
    profiles = shared_data / "iss_ca1" / "reference_class_profiles.h5ad"
    code, out, err = _run(
        ["map", "-r", profiles, "-s", store, "--cluster-key", "cell_class", "--impute", "Gad1"],
        capsys,
    )
    assert code == 0, err
    sdata = sd.read_zarr(store)
    table, cells = sdata.tables["spatial_impute"], sdata.tables["table"]
    assert get_table_keys(table) == ("cells", "region", "cell_id")
    assert table.n_obs == cells.n_obs == 3184
    predicted = table.obs["cell_class_predicted"]
    assert predicted.nunique() > 5
    colors = table.uns["cell_class_predicted_colors"]
    assert len(colors) == len(predicted.cat.categories)
    # interneurons (Gad1-high classes) where the measured Gad1 is high
    measured = np.asarray(cells[table.obs_names, "Gad1"].X.todense()).ravel()
    high = measured >= np.quantile(measured, 0.95)
    share_interneuron = np.mean(
        ~predicted[high].astype(str).str.startswith(("PC", "Astro", "Oligo"))
    )
    assert share_interneuron > 0.5


def test_cli_gene_words_and_plain_zarr_folders(cosmx_reference, tmp_path, capsys):
    """``--genes Markers`` (a typo) is refused, not taken as one gene; a .zarr folder that is not
    a SpatialData store is named as such."""
    store, _ = make_store(tmp_path / "cells.zarr")
    code, _, err = _run(["map", "-r", cosmx_reference, "-s", store, "--genes", "Markers"], capsys)
    assert code == 2 and "neither 'overlap', 'markers' nor an existing file" in err
    plain = tmp_path / "adata.zarr"
    plain.mkdir()
    code, _, err = _run(["map", "-r", cosmx_reference, "-s", plain], capsys)
    assert code == 2 and "not a SpatialData store" in err and len(err.strip().splitlines()) == 1
