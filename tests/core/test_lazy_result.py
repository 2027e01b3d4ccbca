"""The lazy result (genes computed from the map when read) against the eager one (issue 24)."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import napari_spatial_impute as nsi
from _data import make_synthetic
from napari_spatial_impute.core import lazy_result as lazy_mod
from napari_spatial_impute.core import project, uncertainty
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.core.lazy_result import lazy_result
from napari_spatial_impute.io import lazy
from napari_spatial_impute.io.lazy import read_result_lazy
from napari_spatial_impute.viz.intervals import mean_widths

LAYERS = ("interval_90_halfwidth", "interval_67_halfwidth")


@pytest.fixture(scope="module")
def ensemble():
    ref, spa = make_synthetic(n_ref=80, n_sp=50, seed=3)
    return nsi.map_cells_to_space(ref, spa, cluster_key="cell_type", seed=0)


def _assert_same(lazy_ad: ad.AnnData, eager: ad.AnnData, exact: bool = True) -> None:
    # a dense (Tangram) map: BLAS sums a block of one gene in another order than a wider one
    same = np.testing.assert_array_equal if exact else _close
    same(np.asarray(lazy_ad.X.compute()), eager.X)
    for key in eager.layers:
        same(np.asarray(lazy_ad.layers[key].compute()), eager.layers[key])
    for j in range(eager.n_vars):
        same(lazy.column(lazy_ad.X, j), eager.X[:, j])


def _close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n_sp=st.integers(12, 60),
    step=st.integers(1, 9),
    dense=st.booleans(),
)
def test_lazy_genes_equal_eager_genes_exactly(seed, n_sp, step, dense):
    ref, spa = make_synthetic(n_ref=50, n_sp=n_sp, seed=seed, sparse=not dense)
    result = nsi.map_cells_to_space(ref, spa, cluster_key="cell_type", seed=seed)
    eager = result_to_anndata(result)
    lz = lazy_result(result, step=step)
    assert lz.X.chunks[1][0] == min(step, eager.n_vars)
    assert set(lz.layers) == set(eager.layers) == set(LAYERS)
    exact = result.neighbours is not None  # the ensemble's sparse map (else Tangram's, dense)
    _assert_same(lz, eager, exact)
    rows = np.array([n_sp - 1, 0, 3, 0])
    (np.testing.assert_array_equal if exact else _close)(lazy.rows(lz.X, rows), eager.X[rows])
    for key in ("obs", "var"):
        assert getattr(lz, key).equals(getattr(eager, key))


def test_tangram_map_and_other_projections(synthetic):
    """A dense (Tangram) map and the argmax projection: the same values, a gene at a time too."""
    ref, spa = synthetic
    result = nsi.map_cells_to_space(ref, spa, method="tangram", epochs=20, seed=0)
    for method in ("probabilistic", "argmax"):
        eager = result_to_anndata(result, method=method)
        lz = lazy_result(result, method=method, step=4)
        np.testing.assert_allclose(np.asarray(lz.X.compute()), eager.X, rtol=1e-6, atol=1e-7)
        for j in (0, eager.n_vars - 1):
            np.testing.assert_allclose(lazy.column(lz.X, j), eager.X[:, j], rtol=1e-6, atol=1e-7)
        rows = np.array([5, 1])
        np.testing.assert_allclose(lazy.rows(lz.X, rows), eager.X[rows], rtol=1e-6, atol=1e-7)


def test_file_written_from_lazy_result_equals_eager(ensemble, tmp_path):
    eager, lz = result_to_anndata(ensemble), lazy_result(ensemble, step=4)
    eager.write_h5ad(tmp_path / "eager.h5ad")
    lz.write_h5ad(tmp_path / "lazy.h5ad")
    a, b = ad.read_h5ad(tmp_path / "lazy.h5ad"), ad.read_h5ad(tmp_path / "eager.h5ad")
    np.testing.assert_array_equal(a.X, b.X)
    for key in b.layers:
        np.testing.assert_array_equal(a.layers[key], b.layers[key])
    assert a.obs.equals(b.obs) and a.var.equals(b.var)
    assert set(a.obsm) == set(b.obsm) and set(a.uns) == set(b.uns)
    # a subset saved as the plugin's writer saves (src[keep].copy()) stays lazy and exact
    keep = np.arange(0, lz.n_obs, 3)
    sub = lz[keep].copy()
    sub.write_h5ad(tmp_path / "sub.h5ad")
    np.testing.assert_array_equal(ad.read_h5ad(tmp_path / "sub.h5ad").X, eager.X[keep])


def test_one_gene_computes_one_gene_and_is_cached(ensemble, monkeypatch):
    calls: list[int] = []
    real = lazy_mod.project_values

    def counting(result, col_idx, method, **kw):
        calls.append(len(col_idx))
        return real(result, col_idx, method, **kw)

    monkeypatch.setattr(lazy_mod, "project_values", counting)
    lz = lazy_result(ensemble, step=5)
    assert calls == []  # nothing imputed until read
    eager = result_to_anndata(ensemble)
    np.testing.assert_array_equal(lazy.column(lz.X, 7), eager.X[:, 7])
    assert calls == [1]  # one gene, not its block of five
    np.testing.assert_array_equal(lazy.column(lz.X, 7), eager.X[:, 7])
    assert calls == [1]  # shown again: from the cache
    out = lazy.column(lz.X, 7)
    out[:] = -1  # the caller's copy: the cache keeps its own
    np.testing.assert_array_equal(lazy.column(lz.X, 7), eager.X[:, 7])
    np.asarray(lz.X[:, 3:5].compute())
    assert calls == [1, 5]  # a generic slice: one block


def test_reliability_in_gene_chunks_equals_one_pass(ensemble, monkeypatch):
    """The predicted Pearson and mean widths are computed gene chunk by gene chunk (bounded
    memory at 10^6 cells) with the numbers of one pass over all genes (float32 reductions over
    a narrower block round differently: equal to float32 precision)."""
    cal = ensemble.calibration
    whole, widths = uncertainty.gene_summaries(ensemble, cal)
    assert whole.equals(uncertainty.reliability(ensemble, cal))
    monkeypatch.setattr(uncertainty, "SUMMARY_BYTES", 1)  # one gene per chunk
    chunked, widths_chunked = uncertainty.gene_summaries(ensemble, cal)
    np.testing.assert_allclose(chunked.to_numpy(), whole.to_numpy(), rtol=1e-6, atol=1e-7)
    hw = uncertainty.intervals(ensemble, cal)
    for lv in cal.levels:
        assert widths_chunked[lv] == pytest.approx(widths[lv], rel=1e-12)
        assert widths[lv] == pytest.approx(2 * float(np.mean(hw[lv], dtype=np.float64)), rel=1e-6)
    lz = lazy_result(ensemble)
    assert mean_widths(lz) == pytest.approx(mean_widths(result_to_anndata(ensemble)), rel=1e-12)


def test_mean_widths_of_lazy_layers_without_record(ensemble):
    eager = result_to_anndata(ensemble)
    lz = lazy_result(ensemble, step=3)
    del lz.uns["spatial_impute"]["uncertainty"]["mean_width"]
    del eager.uns["spatial_impute"]["uncertainty"]["mean_width"]
    assert mean_widths(lz) == pytest.approx(mean_widths(eager), rel=1e-6)


@pytest.mark.filterwarnings("ignore::UserWarning")  # zarr's notes on its v3 defaults
@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_result_file_read_lazily(ensemble, tmp_path, fmt):
    eager = result_to_anndata(ensemble)
    path = tmp_path / f"r.{fmt}"
    if fmt == "zarr":
        with ad.settings.override(zarr_write_format=3):
            eager.write_zarr(path)
    else:
        eager.write_h5ad(path)
    back = read_result_lazy(path)
    assert lazy.is_lazy(back.X) and all(lazy.is_lazy(back.layers[k]) for k in LAYERS)
    for j in (0, 4, eager.n_vars - 1):
        np.testing.assert_array_equal(lazy.column(back.X, j), eager.X[:, j])
        np.testing.assert_array_equal(
            lazy.column(back.layers[LAYERS[0]], j), eager.layers[LAYERS[0]][:, j]
        )
    np.testing.assert_array_equal(lazy.rows(back.X, np.array([9, 2, 9])), eager.X[[9, 2, 9]])
    np.testing.assert_array_equal(np.asarray(back.X.compute()), eager.X)
    assert back.obs.equals(eager.obs) and set(back.obsm) == set(eager.obsm)


def test_broken_result_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(nsi.InputError, match=r"cannot read result file .*bad\.h5ad"):
        read_result_lazy(bad)
    with pytest.raises(nsi.InputError, match="does not exist"):
        read_result_lazy(tmp_path / "missing.h5ad")


def test_memory_of_one_gene_is_bounded():
    """One gene of a 20,000 x 2,000 lazy result: its column, never the 160 MB matrix."""
    ref, spa = make_synthetic(n_ref=150, n_sp=20_000, n_genes=12, extra_ref_genes=1_988, seed=1)
    result = nsi.map_cells_to_space(ref, spa, method="ensemble", seed=0)
    lz = lazy_result(result)
    bound = 16 << 20
    tracemalloc.start()
    try:
        col = lazy.column(lz.X, 1_500)
        hw = lazy.column(lz.layers[LAYERS[0]], 1_500)
        _, peak_lazy = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        eager = project.project_genes(result)
        _, peak_eager = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_lazy < bound < peak_eager
    np.testing.assert_array_equal(col, eager.X[:, 1_500])
    assert hw.shape == (20_000,)


@pytest.mark.parametrize("density", [0.01, 0.2, 0.9])
def test_sparse_product_gives_the_numbers_of_sparse_times_sparse(density):
    """A map times a sparse reference block made dense first (the faster product): the same
    numbers as sparse x sparse, bit for bit."""
    import scipy.sparse as sp

    from napari_spatial_impute.io._sparse import sparse_product

    rng = np.random.default_rng(4)
    A = sp.random(300, 200, density=0.1, format="csr", random_state=rng, dtype=np.float32)
    X = sp.random(200, 50, density=density, format="csr", random_state=rng, dtype=np.float32)
    X.data = np.log1p(X.data * 100).astype(np.float32)
    got = sparse_product(A, X)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, (A @ X).toarray())
    np.testing.assert_array_equal(sparse_product(A, X.toarray()), got)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_store_table_of_lazy_result_written_whole_and_read_lazily(tmp_path):
    """Write to store from the viewer's (lazy) result writes every gene block by block; the
    store's results table opens with its genes left in the store."""
    import warnings

    from _data import make_store
    from napari_spatial_impute.core.export import store_table
    from napari_spatial_impute.io.sdata import read_spatial
    from napari_spatial_impute.io.sdata_write import write_table

    path, ref = make_store(tmp_path / "cells.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spa = read_spatial(path)
    result = nsi.map_cells_to_space(ref, spa, cluster_key="cell_type", method="ensemble", seed=0)
    eager = result_to_anndata(result)
    write_table(store_table(lazy_result(result, step=4)), path, "spatial_impute")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = read_spatial(path, table="spatial_impute")
    # before: the table's X and interval layers were read whole (numpy) when the store opened
    assert lazy.is_lazy(back.X) and all(lazy.is_lazy(back.layers[k]) for k in LAYERS)
    np.testing.assert_array_equal(np.asarray(back.X.compute()), eager.X)
    np.testing.assert_array_equal(lazy.column(back.X, 5), eager.X[:, 5])
    for key in LAYERS:
        np.testing.assert_array_equal(np.asarray(back.layers[key].compute()), eager.layers[key])


def test_lazy_result_holds_the_map_once_and_no_measured_copy(ensemble):
    """The ensemble's map is W and its transposed copy; the lazy result keeps W alone (and no
    spatial values): at 10^6 cells x 117 neighbours each copy is 1.4 GB."""
    lz = lazy_result(ensemble)
    held = lazy.reader_of(lz.X).result
    assert held.neighbours is ensemble.neighbours and held.probabilities.nnz == 0
    assert held.spatial.n_vars == 0 and held.spatial_values.n_vars == 0
    assert lazy.reader_of(lz.layers[LAYERS[0]]).result is held
    rows = np.array([4, 2])
    np.testing.assert_array_equal(lazy.rows(lz.X, rows), result_to_anndata(ensemble).X[rows])


def test_blocks_computed_at_once_are_bounded():
    """dask computes a lazy array with as many threads as cores (16 blocks of intervals at 10^6
    cells would hold about 10 GB); at most MAX_BLOCKS blocks are computed at once."""
    import threading

    import dask

    active, most = [0], [0]
    lock, crowded = threading.Lock(), threading.Event()

    class Slow:
        def block(self, cols):
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
                if active[0] > lazy.MAX_BLOCKS:
                    crowded.set()
            crowded.wait(0.2)  # give more threads the chance to crowd in
            with lock:
                active[0] -= 1
            return np.zeros((3, cols.stop - cols.start), dtype=np.float32)

        def column(self, j):
            return np.zeros(3, dtype=np.float32)

        def rows(self, idx):
            return None

    arr = lazy.lazy_array(Slow(), (3, 16), np.float32, 1)
    with dask.config.set(scheduler="threads", num_workers=2 * lazy.MAX_BLOCKS):
        assert np.asarray(arr.compute()).shape == (3, 16)
    assert most[0] <= lazy.MAX_BLOCKS and not crowded.is_set()


def test_top_units_in_row_chunks_equal_one_pass(monkeypatch):
    """The best units of each cell, TOP_ROWS cells at a time (at 10^6 cells x 117 neighbours
    one pass held 6 GiB): the same indices and shares as one pass, ties included."""
    import scipy.sparse as sp

    rng = np.random.default_rng(7)
    PT = sp.random(500, 80, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    PT.data = rng.integers(1, 4, PT.nnz).astype(np.float32)  # many ties
    PT.data[PT.indptr[3] : PT.indptr[4]] = 0  # a cell without units
    PT.eliminate_zeros()
    whole = project._top_sparse(PT, 5)
    monkeypatch.setattr(project, "TOP_ROWS", 7)
    chunked = project._top_sparse(PT, 5)
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_array_equal(chunked[1], whole[1])
    assert (whole[0][3] == -1).all()


def test_top_units_memory_is_bounded(monkeypatch):
    import scipy.sparse as sp

    n, per_row = 200_000, 40
    rng = np.random.default_rng(0)
    indptr = np.arange(0, n * per_row + 1, per_row)
    indices = rng.integers(0, 3_000, n * per_row).astype(np.int32)
    data = rng.random(n * per_row, dtype=np.float32)
    PT = sp.csr_matrix((data, indices, indptr), shape=(n, 3_000))

    def peak() -> int:
        tracemalloc.start()
        try:
            project._top_sparse(PT, 10)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    chunked = peak()
    monkeypatch.setattr(project, "TOP_ROWS", n)  # all rows at once, as before
    assert chunked < peak() / 2
