"""Value transforms: ``auto`` decides per data set; ``normalize_log1p`` refuses negative values."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_spatial_impute import InputError
from napari_spatial_impute.core.preprocess import (
    apply_transform,
    check_transform,
    describe_transform,
    resolve_transform,
)


def _adata(X) -> ad.AnnData:
    n, g = X.shape
    return ad.AnnData(
        X=X,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"G{j}" for j in range(g)]),
    )


def _dense(adata: ad.AnnData) -> np.ndarray:
    X = adata.X
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)


@pytest.fixture
def counts() -> ad.AnnData:
    rng = np.random.default_rng(0)
    return _adata(sp.csr_matrix(rng.poisson(3.0, size=(30, 8)).astype(np.float32)))


@pytest.fixture
def logged(counts) -> ad.AnnData:
    """Log-normalised values, not integers: ``auto`` must leave them alone."""
    return apply_transform(counts, "normalize_log1p")


def test_auto_normalises_raw_counts(counts):
    assert check_transform("auto") == "auto"
    assert resolve_transform(counts, "auto") == "normalize_log1p"
    out = _dense(apply_transform(counts, "auto"))
    # by hand: each cell scaled to the median total, then log1p
    X = _dense(counts)
    totals = X.sum(1)
    expected = np.log1p(X * (np.median(totals[totals > 0]) / totals)[:, None])
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_array_equal(out, _dense(apply_transform(counts, "normalize_log1p")))


def test_auto_keeps_log_transformed_values_as_given(logged):
    assert resolve_transform(logged, "auto") == "none"
    np.testing.assert_array_equal(_dense(apply_transform(logged, "auto")), _dense(logged))


def test_auto_decides_per_set_and_says_so(counts, logged):
    line = describe_transform(counts, logged, "auto")
    assert line == (
        "reference raw counts -> normalised to median total, log1p; "
        "spatial log-transformed -> as given"
    )
    assert describe_transform(counts, counts, "none") == (
        "reference raw counts -> as given; spatial raw counts -> as given"
    )
    assert "\n" not in line


def test_negative_values_are_refused_in_one_line():
    """A z-scored reference cannot be normalised to a total: one line naming the fix, no NaN."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((6, 4)).astype(np.float32)
    for given in (X, sp.csr_matrix(X)):
        with pytest.raises(InputError, match="the reference holds negative values") as err:
            apply_transform(_adata(given), "normalize_log1p", "reference")
        message = str(err.value)
        assert "\n" not in message and "--transform none" in message


def test_negative_values_pass_as_given():
    """z-scored values are not counts: ``auto`` and ``none`` keep them, no NaN."""
    rng = np.random.default_rng(1)
    z = _adata(rng.standard_normal((20, 5)).astype(np.float32))
    for transform in ("auto", "none"):
        out = _dense(apply_transform(z, transform, "reference"))
        np.testing.assert_array_equal(out, _dense(z))
