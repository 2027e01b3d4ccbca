"""Batches of a batch key, the sample the map is chosen on, and one batch mapped as if it were
alone with the method given (core.batches)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_spatial_impute as nsi
from _data import make_synthetic
from napari_spatial_impute._errors import InputError
from napari_spatial_impute.core.batches import (
    MIN_BATCH_CELLS,
    Batch,
    map_batch,
    plan_batches,
    sample_rows,
)
from napari_spatial_impute.core.export import result_to_anndata

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _obs(values):
    return pd.DataFrame({"section": values}, index=[f"c{i}" for i in range(len(values))])


def test_batches_in_natural_order_with_sorted_rows():
    values = ["s10"] * 25 + ["s2"] * 30 + ["s1"] * 20 + ["s2"] * 5
    batches = plan_batches(_obs(values), "section")
    assert [b.name for b in batches] == ["s1", "s2", "s10"]
    assert [b.n_cells for b in batches] == [20, 35, 25]
    s2 = batches[1].rows
    assert np.all(np.diff(s2) > 0)
    assert set(s2) == set(range(25, 55)) | set(range(75, 80))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=MIN_BATCH_CELLS, max_size=300))
def test_batches_partition_the_cells(codes):
    values = [f"s{c}" for c in codes]
    counts = pd.Series(values).value_counts()
    if (counts < MIN_BATCH_CELLS).any():
        with pytest.raises(InputError, match="fewer than|names cells"):
            plan_batches(_obs(values), "section")
        return
    batches = plan_batches(_obs(values), "section")
    rows = np.concatenate([b.rows for b in batches])
    assert sorted(rows.tolist()) == list(range(len(values)))
    for b in batches:
        assert {values[i] for i in b.rows} == {b.name}


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([f"cell{i}" for i in range(200)], "names cells or fields of view"),
        (["a"] * 100 + ["b"] * 3, r"1 batch has fewer than 20 cells \(b \(3\)\)"),
        (["a"] * 50 + [None] * 2, "2 cells without a value"),
    ],
)
def test_bad_batch_keys_are_refused_in_one_line(values, match):
    with pytest.raises(InputError, match=match) as info:
        plan_batches(_obs(values), "section")
    assert "\n" not in str(info.value)
    assert "refused, not merged" in str(info.value) or "without a value" in str(info.value)


def test_missing_batch_column_lists_the_columns():
    with pytest.raises(InputError, match="'slice' is not a column.*section"):
        plan_batches(_obs(["a"] * 30), "slice")


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(MIN_BATCH_CELLS, 400), min_size=1, max_size=8),
    st.integers(1, 1500),
    st.integers(0, 3),
)
def test_the_choice_sample_is_seeded_and_in_proportion_to_each_batch(sizes, limit, seed):
    values = [f"s{i}" for i, n in enumerate(sizes) for _ in range(n)]
    batches = plan_batches(_obs(values), "section")
    rows = sample_rows(batches, limit, seed)
    assert np.array_equal(rows, sample_rows(batches, limit, seed))
    assert rows.size == min(limit, len(values)) and np.all(np.diff(rows) > 0)
    for b in batches:
        taken = np.isin(rows, b.rows).sum()
        assert abs(taken - b.n_cells * min(1.0, limit / len(values))) < 1.0


def test_one_batch_is_the_mapping_of_that_batch_alone_with_the_method_given():
    ref, sp = make_synthetic(n_ref=120, n_sp=90, n_genes=14, seed=3)
    rows = np.arange(30, 90)
    batch = Batch(1, "b", rows)
    given = {"cluster_key": "cell_type", "seed": 4, "method": "tangram", "epochs": 30}
    out = map_batch(ref, sp[rows].copy(), batch, map_kwargs=given)  # its values in memory
    alone = nsi.map_cells_to_space(ref, sp[rows].copy(), **given)
    assert out.info["params"]["method"] == "tangram"
    expected = result_to_anndata(alone)
    assert out.status == "mapped"
    staged = {s.name: s.read() for s in out.staged}
    # a dense (Tangram) map goes through BLAS: blocks of other sizes round the last bits apart
    tol = {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(staged["X"], expected.X, **tol)
    np.testing.assert_array_equal(
        staged["frame:cluster_probabilities"], expected.obsm["cluster_probabilities"].to_numpy()
    )
    assert list(out.obs["cell_type_predicted"]) == list(expected.obs["cell_type_predicted"])
    for name, layer in expected.layers.items():
        np.testing.assert_allclose(staged[f"layers/{name}"], layer, **tol)
    pd.testing.assert_series_equal(
        out.var["predicted_pearson"], expected.var["predicted_pearson"], rtol=0, atol=1e-5
    )
    assert out.info["training_score"] == pytest.approx(alone.training_score)


def test_a_batch_without_counts_is_skipped_with_the_reason():
    ref, sp = make_synthetic(n_ref=60, n_sp=40, seed=1)
    sp.X = sp.X * 0
    out = map_batch(ref, sp, Batch(0, "empty", np.arange(40)), map_kwargs={})
    assert out.status == "skipped"
    assert "no counts" in out.reason
    assert out.X is None


def test_a_batch_the_mapping_refuses_is_skipped_with_its_one_line():
    ref, sp = make_synthetic(n_ref=60, n_sp=40, seed=1)
    sp.X = sp.X.toarray()
    sp.X[0, 0] = np.nan
    out = map_batch(ref, sp, Batch(0, "bad", np.arange(40)), map_kwargs={})
    assert out.status == "skipped"
    assert "NaN" in out.reason and "\n" not in out.reason
