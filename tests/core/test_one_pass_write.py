"""One pass over the map per block (issue 25): a result written in blocks (``.h5ad``, a
SpatialData table) holds the values, intervals and per-gene summaries of the whole-array
result, its summaries taken from the pass that imputes (no second pass of ``gene_summaries``)."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest

import napari_spatial_impute as nsi
from _data import make_store, make_synthetic
from napari_spatial_impute.core import section_output, uncertainty
from napari_spatial_impute.core.export import result_to_anndata, write_result
from napari_spatial_impute.io.schema import UNS_KEY

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module", params=["ensemble", "tangram"])
def result(request):
    ref, spa = make_synthetic(n_ref=120, n_sp=700, n_genes=14, extra_ref_genes=20, seed=7)
    kwargs = {"epochs": 40} if request.param == "tangram" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nsi.map_cells_to_space(
            ref, spa, method=request.param, cluster_key="cell_type", seed=1, **kwargs
        )


def _no_second_pass(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("gene_summaries called: a second pass over the map")

    monkeypatch.setattr(uncertainty, "gene_summaries", refuse)


def _same_result(got: ad.AnnData, whole: ad.AnnData, exact: bool) -> None:
    close = np.testing.assert_array_equal if exact else _close
    close(np.asarray(got.X), np.asarray(whole.X))
    assert set(got.layers) == set(whole.layers) and len(whole.layers) == 2
    for name in whole.layers:
        close(np.asarray(got.layers[name]), np.asarray(whole.layers[name]))
    np.testing.assert_allclose(
        got.var["predicted_pearson"], whole.var["predicted_pearson"], rtol=0, atol=1e-5
    )
    assert np.isfinite(got.var["predicted_pearson"]).all()
    got_w = got.uns[UNS_KEY]["uncertainty"]["mean_width"]
    np.testing.assert_allclose(got_w, whole.uns[UNS_KEY]["uncertainty"]["mean_width"], rtol=1e-6)


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_genes", [None, 8])
def test_chunked_h5ad_equals_the_result_and_its_summaries(
    result, tmp_path, monkeypatch, chunk_genes
):
    whole = result_to_anndata(result)  # values: the whole arrays; summaries: gene_summaries
    assert whole.layers
    _no_second_pass(monkeypatch)
    monkeypatch.setattr(section_output, "CHUNK_CELLS", 256)  # 3 blocks of cells
    if chunk_genes is None:  # forced chunked by a small threshold instead
        from napari_spatial_impute.core import export

        monkeypatch.setattr(export, "CHUNKED_WRITE_BYTES", 1000)
    path = tmp_path / "out.h5ad"
    returned = write_result(result, path, chunk_genes=chunk_genes)
    assert returned.X is None  # written in blocks
    exact = result.neighbours is not None  # the ensemble's sparse map: the same sums
    _same_result(ad.read_h5ad(path), whole, exact)
    np.testing.assert_array_equal(
        returned.var["predicted_pearson"], ad.read_h5ad(path).var["predicted_pearson"]
    )
    # the in-memory result takes the summaries of its own pass too
    _same_result(result_to_anndata(result), whole, exact)


def test_chunked_store_table_takes_the_summaries_of_its_pass(tmp_path, monkeypatch):
    import spatialdata as sd

    from napari_spatial_impute.core.export import write_result_to_store
    from napari_spatial_impute.io.sdata import read_spatial

    path, ref = make_store(tmp_path / "s.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = nsi.map_cells_to_space(ref, read_spatial(path), cluster_key="cell_type")
    whole = result_to_anndata(result)
    _no_second_pass(monkeypatch)
    monkeypatch.setattr(section_output, "CHUNK_CELLS", 16)
    table = write_result_to_store(result, path, name="chunked", chunk_genes=4)
    got = sd.read_zarr(path).tables["chunked"]
    _same_result(got, whole, exact=True)
    np.testing.assert_array_equal(table.var["predicted_pearson"], got.var["predicted_pearson"])
