"""Projection: imputed genes, cluster probabilities and the argmax mapping."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import napari_spatial_impute as nsi
from napari_spatial_impute import InputError
from napari_spatial_impute.core.project import (
    mapped_units,
    project_cell_annotations,
    project_genes,
    top_mapped_units,
)


@pytest.fixture(params=["ensemble", "tangram"])
def result(synthetic, request):
    """The map of each method: projections, argmax and top units are read from either."""
    ref, spa = synthetic
    return nsi.map_cells_to_space(
        ref, spa, method=request.param, cluster_key="cell_type", epochs=100, seed=0
    )


def _dense(P):
    return P.toarray() if sp.issparse(P) else np.asarray(P)


def test_probabilistic_projection_is_MtS_for_all_genes(result):
    out = project_genes(result, method="probabilistic")
    ref = result.reference
    assert list(out.var_names) == list(ref.var_names)  # extra reference genes included
    expected = _dense(result.probabilities).T @ ref.X.toarray()
    np.testing.assert_allclose(out.X, expected, rtol=1e-4, atol=1e-5)
    assert out.var["is_training"].sum() == len(result.genes.training_reference)
    assert "spatial" in out.obsm


def test_gene_subset_any_case(result):
    out = project_genes(result, ["GENE13", "gene0"])
    assert list(out.var_names) == ["Gene13", "Gene0"]
    with pytest.raises(InputError, match="not in the reference"):
        project_genes(result, ["NoSuchGene"])


def test_argmax_projection(result):
    out = project_genes(result, method="argmax")
    idx, share = mapped_units(result)
    np.testing.assert_array_equal(idx, _dense(result.probabilities).argmax(0))
    np.testing.assert_allclose(out.X, result.reference.X.toarray()[idx], rtol=1e-6)
    assert (share > 0).all() and (share <= 1).all()


def test_cluster_probabilities(result):
    probs = project_cell_annotations(result, source="tangram")
    assert list(probs.columns) == ["T0", "T1", "T2"]
    assert probs.dtypes.unique().tolist() == [np.float32]
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    labels = result.reference.obs["cell_type"].to_numpy()
    P = _dense(result.probabilities)
    manual = np.stack([P[labels == c].sum(0) for c in probs.columns], 1)
    np.testing.assert_allclose(probs.to_numpy(), manual / manual.sum(1, keepdims=True), rtol=1e-4)


@pytest.mark.parametrize("method", ["ensemble", "tangram"])
def test_cluster_probabilities_recover_true_types(synthetic, method):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(ref, spa, method=method, cluster_key="cell_type", epochs=300, seed=0)
    truth = spa.obs["true_type"].to_numpy()
    pred = project_cell_annotations(r).idxmax(axis=1).to_numpy()
    assert (pred == truth).mean() > 0.7


def test_clusters_mode_probabilities_weight_by_cluster_size(synthetic):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(ref, spa, mode="clusters", cluster_key="cell_type", epochs=100)
    probs = project_cell_annotations(r, source="tangram")
    mass = r.probabilities * r.unit_weights[:, None]
    np.testing.assert_allclose(probs.to_numpy(), (mass / mass.sum(0)).T, rtol=1e-4)
    out = project_genes(r, ["Gene0"], method="argmax")
    assert out.X.shape == (spa.n_obs, 1)


def test_top_mapped_units(result):
    idx, share = top_mapped_units(result, k=5)
    assert idx.shape == (result.spatial.n_obs, 5)
    assert (np.diff(share, axis=1) <= 1e-7).all()
    np.testing.assert_array_equal(idx[:, 0], _dense(result.probabilities).argmax(0))


def test_the_ensemble_map_is_one_consistent_map(synthetic):
    """Issue 15: imputed genes, cluster probabilities and mapped cells come from one map."""
    ref, spa = synthetic
    result = nsi.map_cells_to_space(ref, spa, cluster_key="cell_type", seed=0, method="ensemble")
    assert result.params["method"] == "ensemble" and result.params["epochs_done"] == 0
    W = result.neighbours
    assert W is not None and W.shape == (result.spatial.n_obs, result.reference.n_obs)
    np.testing.assert_allclose(np.asarray(W.sum(1)).ravel(), 1.0, rtol=1e-5)
    out = project_genes(result)
    np.testing.assert_allclose(out.X, W @ result.reference.X.toarray(), rtol=1e-4, atol=1e-5)
    # the map is W itself: its own projection, argmax and cluster shares are W's
    np.testing.assert_array_equal(_dense(result.probabilities), W.T.toarray())
    np.testing.assert_allclose(
        project_genes(result, method="probabilistic").X, out.X, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(mapped_units(result)[0], np.asarray(W.argmax(1)).ravel())
    probs = project_cell_annotations(result)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        probs.to_numpy(), project_cell_annotations(result, source="tangram").to_numpy(), atol=1e-6
    )
    with pytest.raises(InputError, match="method 'nope'"):
        project_genes(result, method="nope")


def test_a_tangram_map_is_its_own_projection(synthetic):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=20, cluster_key="cell_type")
    assert r.neighbours is None and r.params["epochs_done"] == 20
    # its intervals are its own (issue 22): calibrated on genes held out of a Tangram map
    assert r.calibration is not None and r.params["method"] == "tangram"
    np.testing.assert_allclose(project_genes(r).X, project_genes(r, method="probabilistic").X)
    with pytest.raises(InputError, match="this is a Tangram map"):
        project_genes(r, method="neighbours")
    with pytest.raises(InputError, match="this is a Tangram map"):
        project_cell_annotations(r, source="neighbours")
