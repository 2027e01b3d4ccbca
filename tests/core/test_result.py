"""The result AnnData round-trips through .h5ad without loss and is readable by scanpy."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import napari_spatial_impute as nsi
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.io.schema import UNS_KEY, history_frame, training_genes_frame


def test_result_layout_and_round_trip(merfish, tmp_path):
    ref, spa = merfish
    spa.obs["fov"] = pd.Categorical(
        np.where(spa.obsm["spatial"][:, 0] > np.median(spa.obsm["spatial"][:, 0]), "1", "0")
    )
    spa.obsm["extra"] = np.arange(spa.n_obs * 2, dtype=np.float64).reshape(-1, 2)
    r = nsi.map_cells_to_space(ref, spa, method="tangram", cluster_key="cell_type", epochs=50)
    out = result_to_anndata(r)
    assert out.shape == (750, 134)
    assert out.obsm["cluster_probabilities"].shape == (750, 14)
    assert out.obs["cell_type_predicted"].dtype == "category"
    # two panel genes have no counts in the reference: reported, imputed, not trained on
    assert out.var["is_training"].sum() == 132
    assert set(out.var_names[out.var["dropped_reason"] != ""]) == {"Galr2", "Avpr2"}
    assert set(spa.obs.columns) <= set(out.obs.columns)
    np.testing.assert_array_equal(out.obsm["spatial"], spa.obsm["spatial"])
    np.testing.assert_array_equal(out.obsm["extra"], spa.obsm["extra"])
    np.testing.assert_array_equal(out.obsm["measured"].to_numpy(), spa.X.toarray())

    path = tmp_path / "result.h5ad"
    nsi.write_h5ad_atomic(out, path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.X, out.X)
    pd.testing.assert_frame_equal(back.obs, out.obs)
    pd.testing.assert_frame_equal(back.var, out.var)
    pd.testing.assert_frame_equal(
        back.obsm["cluster_probabilities"], out.obsm["cluster_probabilities"]
    )
    pd.testing.assert_frame_equal(back.obsm["measured"], out.obsm["measured"])
    for key in ("spatial", "extra", "mapping_top_index", "mapping_top_share"):
        np.testing.assert_array_equal(back.obsm[key], out.obsm[key])
    info = back.uns[UNS_KEY]
    assert info["params"]["epochs"] == 50 and info["params"]["mode"] == "cells"
    np.testing.assert_array_equal(info["history"]["main_loss"], r.history["main_loss"])
    assert info["training_score"] == pytest.approx(r.training_score)
    assert len(history_frame(back)) == 50
    tdf = training_genes_frame(back)
    assert tdf["train_score"].is_monotonic_decreasing and len(tdf) == 132


def test_ensemble_result_round_trip_has_no_epochs_and_its_intervals(merfish, tmp_path):
    ref, spa = merfish
    r = nsi.map_cells_to_space(ref, spa, cluster_key="cell_type")
    path = tmp_path / "ensemble.h5ad"
    nsi.write_h5ad_atomic(result_to_anndata(r), path)
    back = ad.read_h5ad(path)
    info = back.uns[UNS_KEY]
    assert info["params"]["method"] == "ensemble" and info["params"]["epochs_done"] == 0
    assert info["projection"] == "neighbours" and len(history_frame(back)) == 0
    assert {"interval_90_halfwidth", "interval_67_halfwidth"} <= set(back.layers)
    # the mapped cell is the ensemble's heaviest reference cell
    heaviest = np.asarray(r.neighbours.argmax(1)).ravel()
    np.testing.assert_array_equal(
        back.obs["mapped_unit"].astype(str).to_numpy(), ref.obs_names.to_numpy()[heaviest]
    )


def test_scanpy_reads_result(merfish, tmp_path):
    import scanpy as sc

    ref, spa = merfish
    out = result_to_anndata(nsi.map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=10))
    path = tmp_path / "r.h5ad"
    nsi.write_h5ad_atomic(out, path)
    a = sc.read_h5ad(path)
    df = sc.get.obs_df(a, ["Gad1", "cell_type_predicted"])
    assert df.shape == (750, 2)


def test_dropped_gene_still_imputed(synthetic):
    import scipy.sparse as sp

    ref, spa = synthetic
    X = spa.X.toarray()
    X[:, 2] = 0
    spa.X = sp.csr_matrix(X)
    out = result_to_anndata(nsi.map_cells_to_space(ref, spa, epochs=5))
    assert "Gene2" in out.var_names
    assert not out.var.loc["Gene2", "is_training"]
    assert out.var.loc["Gene2", "dropped_reason"] == "no counts in spatial data"
    assert list(out.uns[UNS_KEY]["dropped_genes"]) == ["Gene2"]


def test_chunked_write_equals_in_memory(merfish, tmp_path):
    from napari_spatial_impute.core.export import write_result

    ref, spa = merfish
    r = nsi.map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=20)
    a = write_result(r, tmp_path / "mem.h5ad")
    b = write_result(r, tmp_path / "chunked.h5ad", chunk_genes=7)
    assert a.X is not None and b.X is None  # the chunked path never held the whole matrix
    back_a, back_b = ad.read_h5ad(tmp_path / "mem.h5ad"), ad.read_h5ad(tmp_path / "chunked.h5ad")
    np.testing.assert_array_equal(back_a.X, back_b.X)
    pd.testing.assert_frame_equal(back_a.var, back_b.var)
    pd.testing.assert_frame_equal(
        back_a.obsm["cluster_probabilities"], back_b.obsm["cluster_probabilities"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunked.h5ad", "mem.h5ad"]
