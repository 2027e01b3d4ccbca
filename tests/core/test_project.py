"""Projection: imputed genes, cluster probabilities and the argmax mapping."""

from __future__ import annotations

import numpy as np
import pytest

import napari_spatial_impute as nsi
from napari_spatial_impute import InputError
from napari_spatial_impute.core.project import mapped_units, top_mapped_units


@pytest.fixture
def result(synthetic):
    ref, spa = synthetic
    return nsi.map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=100, seed=0)


def test_probabilistic_projection_is_MtS_for_all_genes(result):
    out = result.project_genes(method="probabilistic")
    ref = result.reference
    assert list(out.var_names) == list(ref.var_names)  # extra reference genes included
    expected = result.probabilities.T @ ref.X.toarray()
    np.testing.assert_allclose(out.X, expected, rtol=1e-4, atol=1e-5)
    assert out.var["is_training"].sum() == len(result.genes.training_reference)
    assert "spatial" in out.obsm


def test_gene_subset_any_case(result):
    out = result.project_genes(["GENE13", "gene0"])
    assert list(out.var_names) == ["Gene13", "Gene0"]
    with pytest.raises(InputError, match="not in the reference"):
        result.project_genes(["NoSuchGene"])


def test_argmax_projection(result):
    out = result.project_genes(method="argmax")
    idx, share = mapped_units(result)
    np.testing.assert_array_equal(idx, result.probabilities.argmax(0))
    np.testing.assert_allclose(out.X, result.reference.X.toarray()[idx], rtol=1e-6)
    assert (share > 0).all() and (share <= 1).all()


def test_cluster_probabilities(result):
    probs = result.cluster_probabilities(source="tangram")
    assert list(probs.columns) == ["T0", "T1", "T2"]
    assert probs.dtypes.unique().tolist() == [np.float32]
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    labels = result.reference.obs["cell_type"].to_numpy()
    manual = np.stack([result.probabilities[labels == c].sum(0) for c in probs.columns], 1)
    np.testing.assert_allclose(probs.to_numpy(), manual / manual.sum(1, keepdims=True), rtol=1e-4)


def test_cluster_probabilities_recover_true_types(synthetic):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=300, seed=0)
    truth = spa.obs["true_type"].to_numpy()
    for source in ("tangram", "neighbours"):
        pred = r.cluster_probabilities(source=source).idxmax(axis=1).to_numpy()
        assert (pred == truth).mean() > 0.7, source


def test_clusters_mode_probabilities_weight_by_cluster_size(synthetic):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(ref, spa, mode="clusters", cluster_key="cell_type", epochs=100)
    probs = r.cluster_probabilities(source="tangram")
    mass = r.probabilities * r.unit_weights[:, None]
    np.testing.assert_allclose(probs.to_numpy(), (mass / mass.sum(0)).T, rtol=1e-4)
    out = r.project_genes(["Gene0"], method="argmax")
    assert out.X.shape == (spa.n_obs, 1)


def test_top_mapped_units(result):
    idx, share = top_mapped_units(result, k=5)
    assert idx.shape == (result.spatial.n_obs, 5)
    assert (np.diff(share, axis=1) <= 1e-7).all()
    np.testing.assert_array_equal(idx[:, 0], result.probabilities.argmax(0))


def test_neighbour_ensemble_is_default_and_row_stochastic(result):
    W = result.neighbours
    assert W is not None and W.shape == (result.spatial.n_obs, result.reference.n_obs)
    np.testing.assert_allclose(np.asarray(W.sum(1)).ravel(), 1.0, rtol=1e-5)
    out = result.project_genes()
    np.testing.assert_allclose(out.X, W @ result.reference.X.toarray(), rtol=1e-4, atol=1e-5)
    probs = result.cluster_probabilities()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    with pytest.raises(InputError, match="method 'nope'"):
        result.project_genes(method="nope")


def test_without_neighbours_falls_back_to_tangram(synthetic):
    ref, spa = synthetic
    r = nsi.map_cells_to_space(ref, spa, epochs=20, neighbours=False, cluster_key="cell_type")
    np.testing.assert_allclose(r.project_genes().X, r.project_genes(method="probabilistic").X)
    with pytest.raises(InputError, match="no neighbourhood ensemble"):
        r.project_genes(method="neighbours")
