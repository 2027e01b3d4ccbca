"""Memory bounded by blocks of cells (issue 25): each step computed over blocks of spatial cells
gives the numbers of the whole computation, and holds one block, not all cells x genes."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

import napari_spatial_impute as nsi
from _data import make_synthetic
from napari_spatial_impute.core import neighbours, section_output
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.core.lazy_result import lazy_result
from napari_spatial_impute.core.mapping import training_scores
from napari_spatial_impute.core.neighbours import neighbour_weights, similarity_values
from napari_spatial_impute.core.project import project_values
from napari_spatial_impute.core.section_output import impute_in_chunks, output_arrays
from napari_spatial_impute.core.uncertainty import intervals
from napari_spatial_impute.io.lazy import column
from napari_spatial_impute.io.schema import interval_layer, level_name


def _values(n_ref: int, n_sp: int, genes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    programs = rng.gamma(1.0, 1.0, size=(4, genes)) + 0.05
    S = rng.poisson(programs[rng.integers(0, 4, n_ref)] * 5).astype(np.float32)
    G = rng.poisson(programs[rng.integers(0, 4, n_sp)] * 3).astype(np.float32)
    G[:, 0] = 2.0  # a gene that does not vary in space (z-scores 0)
    return S, G


@pytest.mark.parametrize("raw", [False, True])
@pytest.mark.parametrize("search", ["exact", "approximate"])
def test_spatial_spaces_in_blocks_give_the_whole_weights(monkeypatch, raw, search):
    S, G = _values(300, 700, 15)
    whole = neighbour_weights(S, G, search=search, spatial_raw=raw)
    # one block of all cells: the weights of the values transformed beforehand, bit for bit
    given = neighbour_weights(S, similarity_values(G, raw), search=search)
    assert (whole != given).nnz == 0
    monkeypatch.setattr(neighbours, "SPACE_ROWS", 64)  # 11 blocks of spatial cells
    blocks = neighbour_weights(S, G, search=search, spatial_raw=raw, chunk=50)
    assert blocks.shape == whole.shape
    np.testing.assert_array_equal(blocks.indptr, whole.indptr)
    np.testing.assert_array_equal(blocks.indices, whole.indices)
    np.testing.assert_allclose(blocks.data, whole.data, rtol=1e-5, atol=1e-7)


def test_similarity_rows_are_rows_of_the_whole():
    _, G = _values(10, 200, 8)
    rows = np.array([3, 7, 150, 199])
    np.testing.assert_array_equal(
        similarity_values(G, True, rows), similarity_values(G, True)[rows]
    )


@pytest.mark.parametrize("kind", ["csc", "csr", "dense"])
def test_training_scores_over_blocks_equal_the_whole(kind):
    rng = np.random.default_rng(1)
    W = sp.random(500, 40, density=0.2, format="csr", random_state=2, dtype=np.float32)
    P = {"csc": W.T, "csr": sp.csr_matrix(W.T), "dense": W.T.toarray()}[kind]
    S = rng.random((40, 9)).astype(np.float32)
    G = rng.random((500, 9)).astype(np.float32)
    G[:, 3] = 0.0  # no measured signal: NaN in both
    whole = training_scores(P, S, G)
    blocks = training_scores(P, S, G, rows=37)
    np.testing.assert_allclose(blocks, whole, rtol=1e-12, equal_nan=True)
    assert np.isnan(whole[3]) and np.isnan(blocks[3])


@pytest.fixture(scope="module")
def section():
    """An ensemble map with intervals of 20,000 spatial cells (a small reference and panel)."""
    ref, spa = make_synthetic(n_ref=150, n_sp=20_000, n_genes=16, extra_ref_genes=24, seed=3)
    return nsi.map_cells_to_space(ref, spa, method="ensemble", cluster_key="cell_type", seed=0)


def test_blocks_of_cells_equal_the_whole(section):
    names = list(section.reference.var_names)
    idx = section.reference.var_names.get_indexer(names)
    values = project_values(section, idx, "neighbours")
    widths = intervals(section, section.calibration, names)
    arrays = {
        a: np.full(values.shape, np.nan, np.float32) for a in output_arrays(section, "neighbours")
    }
    starts = []

    def put(name, cells, genes, block):
        if name == "X":
            starts.append(cells.start)
        arrays[name][cells, genes] = block

    impute_in_chunks(section, names, "neighbours", put, chunk_cells=3_001)
    assert starts == list(range(0, 20_000, 3_001))
    np.testing.assert_allclose(arrays["X"], values, rtol=1e-6, atol=1e-7)
    for lv in widths:
        got = arrays[f"layers/{interval_layer(level_name(lv))}"]
        np.testing.assert_allclose(got, widths[lv], rtol=1e-5, atol=1e-6)


def test_result_anndata_and_lazy_intervals_equal_the_whole(section, monkeypatch):
    names = list(section.reference.var_names)[:10]
    widths = intervals(section, section.calibration, names)
    monkeypatch.setattr(section_output, "CHUNK_CELLS", 500)  # 40 blocks of 500 cells
    out = result_to_anndata(section, genes=names)
    idx = section.reference.var_names.get_indexer(names)
    np.testing.assert_allclose(out.X, project_values(section, idx, "neighbours"), rtol=1e-6)
    lazy = lazy_result(section, genes=names)
    for lv, hw in widths.items():
        name = interval_layer(level_name(lv))
        np.testing.assert_allclose(out.layers[name], hw, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(column(lazy.layers[name], 4), hw[:, 4], rtol=1e-5, atol=1e-6)


def _peak(fn, *args, **kwargs) -> int:
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_training_scores_memory_is_one_block():
    # 20,000 cells x 50 genes: all cells at once hold float64 arrays of 8 MB (several of them)
    n, g, units, rows = 20_000, 50, 200, 1_000
    rng = np.random.default_rng(0)
    P = sp.random(units, n, density=0.05, format="csc", random_state=0, dtype=np.float32)
    S = rng.random((units, g)).astype(np.float32)
    G = rng.random((n, g)).astype(np.float32)
    whole = n * g * 8
    block = rows * g * 8
    chunked = _peak(training_scores, P, S, G, rows=rows)
    # a few float64 arrays of one block (and the CSR row block of the map)
    bound = 6 * block + P.nnz * 12 // (n // rows) + (1 << 20)
    assert bound < whole  # the bound tells the two apart
    assert chunked < bound, (chunked, bound)
    assert _peak(training_scores, P, S, G, rows=n) > whole  # all cells at once do not fit it


def test_interval_layer_memory_is_one_block(section, monkeypatch):
    names = list(section.reference.var_names)
    n, g = section.spatial.n_obs, len(names)
    whole = n * g * 8  # one float64 array of all cells x these genes
    monkeypatch.setattr(section_output, "CHUNK_CELLS", 500)  # 500 cells per block
    lazy = lazy_result(section, genes=names, step=g)
    reader = lazy.layers[interval_layer(level_name(section.calibration.levels[0]))]
    from napari_spatial_impute.io.lazy import reader_of

    cols = reader_of(reader)
    assert cols is not None
    blocked = _peak(cols.block, slice(0, g))
    out = n * g * 4  # the float32 block returned
    bound = out + 12 * 20_000 * 8 + section.neighbours.nnz * 8 // 40 + (2 << 20)
    assert bound < out + whole
    assert blocked < bound, (blocked, bound)
    assert _peak(intervals, section, section.calibration, names) > out + whole
