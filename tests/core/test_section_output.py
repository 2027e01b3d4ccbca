"""Imputing a chunk of cells at a time (issue 25): the same numbers as the whole-array result,
whatever the chunk and band sizes, for every projection, with and without intervals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp_
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_spatial_impute as nsi
from _data import make_synthetic
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.core.project import resolve_method
from napari_spatial_impute.core.section_output import impute_in_chunks, output_arrays
from napari_spatial_impute.core.uncertainty import gene_summaries

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _result(method="ensemble", sparse=False, **kwargs):
    ref, sp = make_synthetic(n_ref=120, n_sp=150, n_genes=14, seed=5)
    if sparse:
        ref.X = sp_.csr_matrix(ref.X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs.setdefault("cluster_key", "cell_type")
        return nsi.map_cells_to_space(ref, sp, method=method, seed=2, epochs=40, **kwargs)


def _chunked(result, method, names, chunk_cells, band_genes):
    n = result.spatial.n_obs
    arrays = {
        a: np.full((n, len(names)), np.nan, np.float32) for a in output_arrays(result, method)
    }
    blocks = []

    def put(name, cells, band, block):
        assert block.shape == (cells.stop - cells.start, band.stop - band.start)
        assert block.shape[0] <= chunk_cells and block.shape[1] <= band_genes
        blocks.append((name, cells.start, band.start))
        arrays[name][cells, band] = block

    summaries = impute_in_chunks(
        result, names, method, put, chunk_cells=chunk_cells, band_genes=band_genes
    )
    assert len(blocks) == len(set(blocks)), "each block written once"
    return arrays, summaries


RESULTS: dict = {}
WHOLE: dict = {}


def _cached(key):
    if key not in RESULTS:
        method, sparse, mode = key
        kwargs = {"mode": mode} if mode != "cells" else {}
        RESULTS[key] = _result(method, sparse, **kwargs)
    return RESULTS[key]


@pytest.mark.parametrize(
    ("key", "projection"),
    [
        (("ensemble", False, "cells"), "auto"),
        (("ensemble", True, "cells"), "auto"),
        (("ensemble", False, "cells"), "probabilistic"),
        (("tangram", False, "cells"), "auto"),
        (("tangram", True, "cells"), "argmax"),
        (("tangram", False, "clusters"), "auto"),
    ],
)
@settings(max_examples=4, deadline=None)
@given(chunk=st.integers(1, 200), band=st.integers(1, 20))
def test_chunks_give_the_whole_result(key, projection, chunk, band):
    result = _cached(key)
    method = resolve_method(result, projection)
    if (key, projection) not in WHOLE:
        WHOLE[key, projection] = result_to_anndata(result, method=projection)
    whole = WHOLE[key, projection]
    names = list(whole.var_names)
    arrays, summaries = _chunked(result, method, names, chunk, band)
    # a sparse map (the ensemble) makes each cell's row from its own entries: the same numbers;
    # a dense one (Tangram) goes through BLAS, whose sums round by block size in the last bits
    tol = {"rtol": 0, "atol": 0} if key[0] == "ensemble" else {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(arrays.pop("X"), whole.X, **tol)
    for name, values in arrays.items():
        np.testing.assert_allclose(values, whole.layers[name.removeprefix("layers/")], **tol)
    calibrated = result.calibration is not None and method == resolve_method(result, "auto")
    assert set(arrays) == ({f"layers/{k}" for k in whole.layers} if calibrated else set())
    if not calibrated:
        assert summaries is None
        return
    predicted, widths = gene_summaries(result, result.calibration, names)
    # sums over the cells in float64 chunk by chunk (the whole path: numpy's float32 std)
    np.testing.assert_allclose(summaries[0].to_numpy(), predicted.to_numpy(), rtol=0, atol=1e-5)
    assert list(summaries[0].index) == names
    for lv, width in widths.items():
        assert summaries[1][lv] == pytest.approx(width, rel=1e-6)


def test_a_gene_subset_in_any_order():
    result = _cached(("ensemble", False, "cells"))
    names = list(result.reference.var_names[[7, 2, 11]])
    whole = result_to_anndata(result, genes=names)
    arrays, _ = _chunked(result, "neighbours", names, 50, 2)
    np.testing.assert_array_equal(arrays["X"], whole.X)


def test_a_check_stops_between_blocks():
    result = _cached(("ensemble", False, "cells"))
    names = list(result.reference.var_names)
    seen = []

    def check():
        if len(seen) >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        impute_in_chunks(
            result, names, "neighbours", lambda *a: seen.append(a[1]), check=check, chunk_cells=10
        )
    assert len(seen) == 3  # one block: X and two interval layers, then stopped
