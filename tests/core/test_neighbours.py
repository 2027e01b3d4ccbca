"""The neighbourhood ensemble and its accuracy against the Tangram map on the real pair."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import napari_spatial_impute as nsi
from napari_spatial_impute.core.neighbours import (
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
    from napari_spatial_impute.core.preprocess import apply_transform

    ref, spa = merfish_pair
    ref = ref.copy()
    spa = spa.copy()
    ref.X = apply_transform(ref, "normalize_log1p").X
    spa.X = apply_transform(spa, "normalize_log1p").X
    default = nsi.cross_validate(ref, spa, folds=5, seed=0)
    tangram = nsi.cross_validate(ref, spa, folds=5, seed=0, epochs=150, method="tangram")
    assert np.nanmedian(default["pearson"]) > np.nanmedian(tangram["pearson"]) + 0.03


def test_one_cell_sets_give_finite_row_stochastic_weights():
    """One reference or one spatial cell: no NaN (z-scoring one row) and no LinAlgError (eigh)."""
    rng = np.random.default_rng(3)
    many = rng.poisson(2.0, (12, 6)).astype(np.float32)
    one = many[:1] * 2.0
    for S, G in ((many, one), (one, many), (one, one)):
        W = neighbour_weights(S, G)
        assert W.shape == (G.shape[0], S.shape[0])
        assert np.all(np.isfinite(W.data))
        np.testing.assert_allclose(np.asarray(W.sum(1)).ravel(), 1.0, rtol=1e-5)
    # the single spatial cell is a scaled copy of reference cell 0: found in the raw fallback
    assert int(neighbour_weights(many, one).toarray().argmax()) == 0


def test_zscore_of_a_constant_column_is_zero():
    """A constant 7.7 column's float32 mean is not exactly 7.7: the residue over its own tiny
    standard deviation gave z-scores of about +-1 instead of 0."""
    from napari_spatial_impute.core.neighbours import _zscore

    X = torch.tensor(
        [[7.7, 1.0], [7.7, 2.0], [7.7, 3.0], [7.7, 5.0], [7.7, 0.0], [7.7, 1.0], [7.7, 2.0]]
    )
    Z = _zscore(X)
    assert torch.equal(Z[:, 0], torch.zeros(7))
    torch.testing.assert_close(Z[:, 1].std(), torch.tensor(1.0))
    assert torch.equal(_zscore(X[:1]), torch.zeros(1, 2))


def test_a_set_of_identical_cells_falls_back_to_the_values_as_given():
    """Identical spatial cells have no within-set variation: the z and PCA members compared
    rounding noise (or nothing) and matched arbitrary reference cells."""
    rng = np.random.default_rng(5)
    S = (rng.gamma(1.0, 1.0, (40, 8)) + 0.1).astype(np.float32)
    G = np.repeat(S[3:4] * 7.7, 7, axis=0)  # seven copies of reference cell 3, scaled
    W = neighbour_weights(S, G).toarray()
    np.testing.assert_array_equal(W.argmax(1), 3)
    as_given = neighbour_weights(S, G, members=tuple(m._replace(space="raw") for m in MEMBERS))
    np.testing.assert_array_equal(W, as_given.toarray())


@pytest.mark.parametrize(
    "n_ref, n_sp", [(None, 1), (None, 2), (None, 3), (1, None), (2, None), (3, None), (1, 1)]
)
@pytest.mark.parametrize("mode", ["cells", "clusters"])
def test_tiny_slices_of_the_bundled_pair_give_finite_outputs(merfish_pair, n_ref, n_sp, mode):
    """Issue 10 (4): one spatial cell gave NaN genes/intervals/reliability, one reference cell a LinAlgError."""
    ref, spa = merfish_pair
    ref = ref[:n_ref].copy() if n_ref else ref
    spa = spa[:n_sp].copy() if n_sp else spa
    r = nsi.map_cells_to_space(ref, spa, mode=mode, cluster_key="cell_type", epochs=5, seed=0)
    out = r.to_anndata()
    assert out.shape == (spa.n_obs, ref.n_vars)
    assert np.all(np.isfinite(out.X))
    if mode == "cells":  # the ensemble map; clusters mode trains a Tangram map, which has none
        for name in ("interval_90_halfwidth", "interval_67_halfwidth"):
            assert np.all(np.isfinite(out.layers[name])), name
        assert np.all(np.isfinite(out.var["predicted_pearson"].to_numpy()))
    else:
        assert r.params["method"] == "tangram" and not out.layers
    probs = out.obsm["cluster_probabilities"].to_numpy()
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


_HASH_SEED_SCRIPT = """
import sys
import anndata as ad
import numpy as np
from napari_spatial_impute.cli import main
from napari_spatial_impute.io.datasets import bundled_paths

ref, spa = bundled_paths()
main(["map", "-r", str(ref), "-s", str(spa), "--cluster-key", "cell_type", "--epochs", "5",
      "--seed", "0", "--engine", "exact", "-o", sys.argv[1]])
"""


def _all_arrays(a) -> dict[str, np.ndarray]:
    out = {
        "X": np.asarray(a.X),
        "obs_names": np.asarray(a.obs_names),
        "var_names": np.asarray(a.var_names),
    }
    out.update({f"layers/{k}": np.asarray(v) for k, v in a.layers.items()})
    for k, v in a.obsm.items():
        out[f"obsm/{k}"] = v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v)
        if hasattr(v, "columns"):
            out[f"obsm/{k}/columns"] = np.asarray(v.columns)
    out.update({f"obs/{k}": np.asarray(a.obs[k]) for k in a.obs.columns})
    out.update({f"var/{k}": np.asarray(a.var[k]) for k in a.var.columns})
    info = a.uns["spatial_impute"]
    for k, v in info.items():
        if k == "timings":
            continue
        for kk, vv in v.items() if isinstance(v, dict) else [("", v)]:
            out[f"uns/{k}/{kk}"] = np.asarray(vv)
    return out


def test_outputs_identical_across_hash_seeds(tmp_path):
    """Issue 10 (7): the neighbour spaces were iterated in set order (Python's hash seed), so two
    processes summed the ensemble's weights in different orders (X differed by up to 2e-6)."""
    import subprocess
    import sys

    import anndata as ad

    got = {}
    for h in ("0", "1"):  # the two seeds order {"raw", "z", "pca"} differently
        path = tmp_path / f"out_{h}.h5ad"
        env = {**os.environ, "PYTHONHASHSEED": h}
        proc = subprocess.run(
            [sys.executable, "-c", _HASH_SEED_SCRIPT, str(path)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        got[h] = _all_arrays(ad.read_h5ad(path))
    a, b = got["0"], got["1"]
    assert a.keys() == b.keys()
    differ = [k for k in a if not np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f")]
    assert not differ, f"outputs differ between hash seeds: {differ}"
