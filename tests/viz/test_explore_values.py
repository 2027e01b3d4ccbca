"""explore.values and the other per-gene / per-cell reads on lazy, backed, sparse and dense
results (issue 24: genes read lazily)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import napari_spatial_impute as nsi
from _data import make_synthetic
from napari_spatial_impute.core import lazy_result as lazy_mod
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.core.lazy_result import lazy_result
from napari_spatial_impute.io import lazy
from napari_spatial_impute.io.lazy import read_result_lazy
from napari_spatial_impute.io.schema import halfwidths
from napari_spatial_impute.viz import explore as ex


@pytest.fixture(scope="module")
def mapped():
    ref, spa = make_synthetic(n_ref=70, n_sp=45, seed=5)
    result = nsi.map_cells_to_space(ref, spa, cluster_key="cell_type", seed=0)
    return result, result_to_anndata(result)


@pytest.fixture
def counted(monkeypatch):
    """Every projection a lazy result makes: ``(kind, genes, cells)`` per call."""
    calls: list[tuple[str, int, int | None]] = []
    real = lazy_mod.project_values

    def counting(result, col_idx, method, cells=None, **kw):
        calls.append(("values", len(col_idx), None if cells is None else len(cells)))
        return real(result, col_idx, method, cells=cells, **kw)

    monkeypatch.setattr(lazy_mod, "project_values", counting)
    return calls


def test_values_of_every_container_equal_eager(mapped, tmp_path):
    result, eager = mapped
    path = tmp_path / "r.h5ad"
    eager.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    sparse = eager.copy()
    sparse.X = sp.csr_matrix(eager.X)
    rows = np.array([3, 0, 7])
    for other in (lazy_result(result, step=4), read_result_lazy(path), backed, sparse):
        for gene in ("Gene0", "gene9", "Gene14"):
            want = eager.X[:, eager.var_names.get_loc(ex.resolve_gene(eager, gene))]
            got = ex.values(other, "imputed", gene)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(ex.values(other, "imputed", gene, rows), want[rows])
        for kind, name in (("measured", "Gene1"), ("probability", "T0")):
            np.testing.assert_array_equal(
                ex.values(other, kind, name), ex.values(eager, kind, name)
            )
    backed.file.close()


def test_values_computes_only_the_gene_shown(mapped, counted):
    result, eager = mapped
    lz = lazy_result(result, step=5)
    got = ex.values(lz, "imputed", "Gene6")
    np.testing.assert_array_equal(got, eager[:, "Gene6"].X.ravel())
    assert counted == [("values", 1, None)]  # one gene at every cell, not its block of 5
    got[:] = 0  # the caller's array: a cached gene is not changed by it
    np.testing.assert_array_equal(ex.values(lz, "imputed", "gene6"), eager[:, "Gene6"].X.ravel())
    assert counted == [("values", 1, None)]  # shown again: cached
    other = lazy_result(result, step=5)  # a new result: its own arrays, nothing cached
    ex.values(other, "imputed", "Gene6")
    assert counted == [("values", 1, None)] * 2


def test_cell_summary_and_hover_of_lazy_result_read_one_cell(mapped, counted, monkeypatch):
    """The cell summary's top genes read the cell's row and the shown gene's interval its
    column: before, a lazy X was computed whole (every block) for one cell."""
    result, eager = mapped
    lz = lazy_result(result, step=4)
    blocks: list[slice] = []
    for cls in (lazy_mod.ImputedColumns, lazy_mod.IntervalColumns):
        real = cls.block

        def spy(self, cols, real=real):
            blocks.append(cols)
            return real(self, cols)

        monkeypatch.setattr(cls, "block", spy)
    assert ex.cell_summary(lz, 11, ["Gene3"]) == ex.cell_summary(eager, 11, ["Gene3"])
    assert ("values", eager.n_vars, 1) in counted  # the one cell's genes
    assert all(c[2] == 1 or c[1] == 1 for c in counted)  # never a block of all cells
    # the hovered gene's interval: one column of the interval layer (a one-gene block)
    assert blocks and all(b.stop - b.start == 1 for b in blocks)
    np.testing.assert_array_equal(
        ex.top_genes_text(lz, np.array([2, 40])), ex.top_genes_text(eager, np.array([2, 40]))
    )
    np.testing.assert_array_equal(
        halfwidths(lz, "Gene2", "67", np.array([1, 5])),
        halfwidths(eager, "Gene2", "67", np.array([1, 5])),
    )


def test_unknown_gene_is_one_line(mapped):
    result, _ = mapped
    with pytest.raises(nsi.InputError, match="not among the 15 imputed genes"):
        ex.values(lazy_result(result), "imputed", "NoSuchGene")
    lazy.clear_cache()


def test_a_clicked_cell_computes_that_cell_alone(mapped, counted):
    """values(..., rows) of a few cells of a lazy result: those cells, not the whole column
    (the cell summary on a click); a shown gene's cached column serves them too."""
    result, eager = mapped
    lz = lazy_result(result, step=5)
    rows = np.array([7, 2])
    want = eager[:, "Gene4"].X.ravel()
    np.testing.assert_array_equal(ex.values(lz, "imputed", "Gene4", rows), want[rows])
    assert counted == [("values", eager.n_vars, 2)]  # the two cells' genes, no column
    mask = np.zeros(eager.n_obs, dtype=bool)
    mask[[1, 3]] = True
    np.testing.assert_array_equal(ex.values(lz, "imputed", "Gene4", mask), want[mask])
    ex.values(lz, "imputed", "Gene4")  # shown: the column, cached
    counted.clear()
    np.testing.assert_array_equal(ex.values(lz, "imputed", "Gene4", rows), want[rows])
    assert counted == []
    many = np.arange(eager.n_obs)
    np.testing.assert_array_equal(ex.values(lz, "imputed", "Gene4", many), want)
