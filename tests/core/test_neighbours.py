"""The neighbourhood ensemble and its accuracy against the Tangram map on the real pair."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import napari_spatial_impute as nsi
from napari_spatial_impute.core.export import result_to_anndata
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
    out = result_to_anndata(r)
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


# ---------------------------------------------------------------------------- search (issue 14)
def _weights_before_the_search_option(S: np.ndarray, G: np.ndarray) -> np.ndarray:
    """The ensemble's weights as computed before ``search`` existed (dense blocks of every
    similarity, the same operations in the same order), for the bit-for-bit check below."""
    from napari_spatial_impute.core.neighbours import PCA_COMPONENTS, _zscore

    def unit(X):
        return X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)

    n, s = S.shape[0], G.shape[0]
    St, Gt = torch.as_tensor(S), torch.as_tensor(G)
    Sz, Gz = _zscore(St), _zscore(Gt)
    cov = (Sz.t() @ Sz + Gz.t() @ Gz) / float(n + s)
    V = torch.linalg.eigh(cov.double())[1][:, -min(PCA_COMPONENTS, S.shape[1]) :].float()
    spaces = {"raw": (unit(St), Gt), "z": (unit(Sz), Gz), "pca": (unit(Sz @ V), Gz @ V)}
    chunk = max(256, (1 << 25) // n)
    out = np.zeros((s, n), dtype=np.float32)
    for a in range(0, s, chunk):
        acc = torch.zeros((min(s, a + chunk) - a, n))
        for space, (ref, sp_) in spaces.items():
            mine = [m for m in MEMBERS if m.space == space]
            top_v, top_i = torch.topk(
                unit(sp_[a : a + chunk]) @ ref.t(), max(effective_k(m.k, n) for m in mine), dim=1
            )
            for m in mine:
                k = effective_k(m.k, n)
                v = top_v[:, :k]
                w = torch.full_like(v, 1.0 / k) if m.temperature is None else None
                w = w if w is not None else torch.softmax(v / m.temperature, dim=1)
                acc.scatter_add_(1, top_i[:, :k], w / len(MEMBERS))
        out[a : a + acc.shape[0]] = acc.numpy()
    return out


@pytest.mark.parametrize("n, s", [(1308, 750), (300, 700), (40, 9)])
def test_small_data_give_the_weights_of_before_bit_for_bit(n, s):
    """search="auto" on small data is the exact search, and that is unchanged."""
    rng = np.random.default_rng(n)
    S = (rng.gamma(0.5, 2.0, (n, 30)) * (rng.random((n, 30)) < 0.4)).astype(np.float32)
    G = (rng.gamma(0.5, 2.0, (s, 30)) * (rng.random((s, 30)) < 0.3)).astype(np.float32)
    before = _weights_before_the_search_option(S, G)
    for search in ("auto", "exact"):
        W = neighbour_weights(S, G, search=search)
        assert np.array_equal(W.toarray(), before), search
        assert W.has_sorted_indices and np.all(W.data > 0)


def _typed_cells(n: int, s: int, genes: int = 40, types: int = 30, seed: int = 0):
    """Counts of cells of many types (log1p), reference and spatial, the spatial at lower depth."""
    rng = np.random.default_rng(seed)
    programs = rng.gamma(0.5, 2.0, (types, genes)) * (rng.random((types, genes)) < 0.5) + 0.05
    S = rng.poisson(programs[rng.integers(0, types, n)] * 4.0)
    G = rng.poisson(programs[rng.integers(0, types, s)] * 2.0)
    return np.log1p(S).astype(np.float32), np.log1p(G).astype(np.float32)


@pytest.mark.parametrize("few_probes", [False, True])
def test_approximate_weights_are_close_to_the_exact_ones(monkeypatch, few_probes):
    """Default probing, and a few lists only (2 x k candidates, 2 of 71 lists at least)."""
    from napari_spatial_impute.core.engine import search

    if few_probes:
        monkeypatch.setattr(search, "CANDIDATE_FACTOR", 2)
        monkeypatch.setattr(search, "MIN_PROBES", 2)
    S, G = _typed_cells(5000, 800)
    exact = neighbour_weights(S, G, search="exact")
    approx = neighbour_weights(S, G, search="approximate", seed=0)
    assert approx.shape == exact.shape and approx.has_sorted_indices
    np.testing.assert_allclose(np.asarray(approx.sum(1)).ravel(), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(approx.data)) and np.all(approx.data > 0)
    # the weight the exact search gives to the neighbours the approximate one also found
    shared = exact.multiply(approx > 0).sum() / exact.sum()
    assert shared > 0.9
    # imputed profiles from either map agree closely
    a, b = exact @ S, approx @ S
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    again = neighbour_weights(S, G, search="approximate", seed=0)
    assert (again != approx).nnz == 0  # same seed, same weights


def test_approximate_weights_with_every_list_probed_are_the_exact_ones():
    """100 reference cells make 10 lists, fewer than the lists probed: the search is exact, and
    the members' weights are summed in the same order as in the dense blocks."""
    S, G = _typed_cells(100, 60, seed=2)
    exact = neighbour_weights(S, G, search="exact")
    approx = neighbour_weights(S, G, search="approximate")
    np.testing.assert_array_equal(approx.indices, exact.indices)
    np.testing.assert_allclose(approx.data, exact.data, rtol=1e-6, atol=1e-7)


def test_approximate_search_on_one_cell_and_identical_cells():
    rng = np.random.default_rng(3)
    many = rng.poisson(2.0, (30, 6)).astype(np.float32) + 0.5
    one = many[:1] * 2.0
    for S, G in ((many, one), (one, many), (one, one), (many, np.repeat(one, 4, axis=0))):
        W = neighbour_weights(S, G, search="approximate")
        assert W.shape == (G.shape[0], S.shape[0]) and np.all(np.isfinite(W.data))
        np.testing.assert_allclose(np.asarray(W.sum(1)).ravel(), 1.0, rtol=1e-5)
    assert int(neighbour_weights(many, one, search="approximate").toarray().argmax()) == 0


def test_approximate_search_can_be_cancelled():
    from napari_spatial_impute import MappingCancelled

    S, G = _typed_cells(500, 100, seed=4)
    with pytest.raises(MappingCancelled, match="cancelled after 0 of 100"):
        neighbour_weights(S, G, search="approximate", cancel=lambda: True)


def test_map_cells_to_space_records_the_search(merfish_pair):
    """The setting reaches the ensemble map; params record the search that ran."""
    ref, spa = merfish_pair
    default = nsi.map_cells_to_space(ref, spa, uncertainty=False)
    assert default.params["search"] == "exact"  # 1,308 x 750: auto is exact
    approx = nsi.map_cells_to_space(ref, spa, uncertainty=False, search="approximate")
    assert approx.params["search"] == "approximate"
    W0, W1 = default.neighbours, approx.neighbours
    assert W0 is not None and W1 is not None
    assert W0.multiply(W1 > 0).sum() / W0.sum() > 0.9
    with pytest.raises(nsi.InputError, match="search 'fast' is not known"):
        nsi.map_cells_to_space(ref, spa, search="fast")
