"""The neighbourhood ensemble and its accuracy against the Tangram map on the real pair."""

from __future__ import annotations

import numpy as np
import torch

import napari_spatial_impute as nsi
from napari_spatial_impute.neighbours import (
    MEMBERS,
    Member,
    effective_k,
    neighbour_weights,
    similarity_values,
)


def test_weights_find_the_planted_neighbours():
    rng = np.random.default_rng(0)
    S = rng.gamma(1.0, 1.0, (200, 30)).astype(np.float32)
    G = S[:20] * 3.0  # spatial cells are scaled copies of the first 20 reference cells
    W = neighbour_weights(S, G, members=(Member("raw", 1),))
    np.testing.assert_array_equal(W.indices, np.arange(20))
    W = neighbour_weights(S, G)
    assert W.shape == (20, 200)
    np.testing.assert_allclose(np.asarray(W.sum(1)).ravel(), 1.0, rtol=1e-5)
    # each spatial cell's own reference twin carries the most weight
    np.testing.assert_array_equal(np.asarray(W.argmax(1)).ravel(), np.arange(20))


def test_effective_k_for_small_references():
    assert effective_k(100, 71) == 14
    assert effective_k(10, 1000) == 10
    assert effective_k(50, 2) == 1


def test_chunking_does_not_change_weights():
    rng = np.random.default_rng(1)
    S, G = rng.random((120, 15)).astype(np.float32), rng.random((90, 15)).astype(np.float32)
    a = neighbour_weights(S, G).toarray()
    b = neighbour_weights(S, G, chunk=17).toarray()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert len(MEMBERS) == 5 and torch.is_tensor(torch.as_tensor(a))


def test_similarity_values_log_normalise_raw_counts():
    X = np.array([[1.0, 3.0], [10.0, 30.0]])
    Y = similarity_values(X, raw_counts=True)
    np.testing.assert_allclose(Y[0], Y[1])  # depth removed
    assert similarity_values(X, raw_counts=False) is X


def test_neighbours_beat_tangram_on_held_out_genes(merfish_pair):
    """Log-normalised data, 5 folds over genes: the default beats the Tangram projection."""
    from napari_spatial_impute.preprocess import apply_transform

    ref, spa = merfish_pair
    ref = ref.copy()
    spa = spa.copy()
    ref.X = apply_transform(ref, "normalize_log1p").X
    spa.X = apply_transform(spa, "normalize_log1p").X
    default = nsi.cross_validate(ref, spa, folds=5, seed=0, epochs=150)
    tangram = nsi.cross_validate(ref, spa, folds=5, seed=0, epochs=150, method="probabilistic")
    assert np.nanmedian(default["pearson"]) > np.nanmedian(tangram["pearson"]) + 0.03
