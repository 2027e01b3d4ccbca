"""Reading and validation: every bad input gets a one-line message naming the fix."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_spatial_impute import InputError
from napari_spatial_impute.io.files import (
    describe_values,
    find_fov_key,
    fov_labels,
    read_h5ad,
    validate_adata,
    write_h5ad_atomic,
)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


def test_missing_spatial_coordinates(synthetic):
    _, spa = synthetic
    del spa.obsm["spatial"]
    with pytest.raises(InputError) as e:
        validate_adata(spa, "spatial", require_spatial=True)
    assert "obsm['spatial']" in _one_line(e)


def test_spatial_hint_names_xy_columns(synthetic):
    _, spa = synthetic
    del spa.obsm["spatial"]
    spa.obs["x"] = 1.0
    spa.obs["y"] = 2.0
    with pytest.raises(InputError, match=r"obs has \['x', 'y'\]"):
        validate_adata(spa, "spatial", require_spatial=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(synthetic, bad):
    ref, _ = synthetic
    X = ref.X.toarray()
    X[0, 0] = bad
    ref.X = X
    with pytest.raises(InputError) as e:
        validate_adata(ref, "reference")
    assert "NaN or infinite" in _one_line(e)


def test_negative_values(synthetic):
    """Measured spatial values are never negative; a scaled (z-scored) reference is accepted."""
    ref, spa = synthetic
    X = spa.X.toarray()
    X[1, 2] = -1
    spa.X = sp.csr_matrix(X)
    with pytest.raises(InputError, match="1 negative values"):
        validate_adata(spa, "spatial")
    X = ref.X.toarray()
    X[1, 2] = -1
    ref.X = sp.csr_matrix(X)
    validate_adata(ref, "reference")
    assert describe_values(ref.X) == "scaled (negative values)"


def test_duplicated_cell_names(synthetic):
    ref, _ = synthetic
    ref.obs_names = ["same"] * ref.n_obs
    with pytest.raises(InputError, match="duplicated cell names.*obs_names_make_unique"):
        validate_adata(ref, "reference")


def test_duplicated_gene_names(synthetic):
    ref, _ = synthetic
    names = list(ref.var_names)
    names[1] = names[0]
    ref.var_names = names
    with pytest.raises(InputError, match="duplicated gene names"):
        validate_adata(ref, "reference")


def test_gene_names_differing_only_in_case(synthetic):
    ref, _ = synthetic
    names = list(ref.var_names)
    names[1] = names[0].upper()
    ref.var_names = names
    with pytest.raises(InputError, match="differ only in case"):
        validate_adata(ref, "reference")


def test_empty_data(synthetic):
    ref, _ = synthetic
    with pytest.raises(InputError, match="empty"):
        validate_adata(ref[:0].copy(), "reference")


def test_wrong_dtype(synthetic):
    ref, _ = synthetic
    ref.X = ref.X.toarray().astype(str)
    with pytest.raises(InputError, match="not numbers"):
        validate_adata(ref, "reference")


def test_csr_array_accepted(synthetic):
    ref, spa = synthetic
    ref.X = sp.csr_array(ref.X)
    validate_adata(ref, "reference")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "broken.h5ad"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(InputError) as e:
        read_h5ad(bad, "spatial")
    assert "cannot read spatial file" in _one_line(e)
    with pytest.raises(InputError, match="does not exist"):
        read_h5ad(tmp_path / "nope.h5ad", "reference")


def test_fov_detection(synthetic):
    _, spa = synthetic
    assert find_fov_key(spa) == "fov"
    spa.obs = spa.obs.rename(columns={"fov": "Field_Of_View"})
    assert find_fov_key(spa) == "Field_Of_View"
    spa.obs = spa.obs.drop(columns=["Field_Of_View"])
    assert find_fov_key(spa) is None
    labels = fov_labels(spa, None)
    assert list(labels.categories) == ["0"] and len(labels) == spa.n_obs
    with pytest.raises(InputError, match="columns there are"):
        find_fov_key(spa, "nope")


def test_fov_labels_sort_naturally():
    import anndata as ad

    a = ad.AnnData(obs=pd.DataFrame({"fov": ["10", "2", "1", "2"]}, index=list("abcd")))
    assert list(fov_labels(a, "fov").categories) == ["1", "2", "10"]
    # ids with text around numbers: the digit runs compare as numbers (sample_fov ids)
    b = ad.AnnData(
        X=np.ones((5, 1), dtype=np.float32),
        obs=pd.DataFrame({"fov": ["s0_10", "s0_2", "s1_0", "s0_0", "s0_2"]}),
    )
    assert list(fov_labels(b, "fov").categories) == ["s0_0", "s0_2", "s0_10", "s1_0"]


def test_describe_values():
    assert describe_values(np.array([[0, 1, 5]], dtype=np.float32)) == "raw counts"
    assert describe_values(np.log1p(np.array([[0.0, 1.5, 5.2]]))) == "log-transformed"
    assert describe_values(np.array([[0.0, 100.5, 52.1]])) == "non-integer (normalised)"


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil", "dok"])
def test_describe_values_any_sparse_format(fmt):
    # lil's data is lists and dok has no data array: both used to fail
    dense = np.zeros((20, 10), dtype=np.float32)
    dense[::3, ::2] = 3.0
    assert describe_values(sp.csr_matrix(dense).asformat(fmt)) == "raw counts"
    assert describe_values(sp.csr_matrix(np.log1p(dense * 1.5)).asformat(fmt)) == "log-transformed"


def test_atomic_write_leaves_no_half_file(synthetic, tmp_path, monkeypatch):
    ref, _ = synthetic
    target = tmp_path / "out.h5ad"
    write_h5ad_atomic(ref, target)
    assert target.exists()
    before = target.read_bytes()

    def boom(self, path, *a, **k):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(type(ref), "write_h5ad", boom)
    with pytest.raises(OSError):
        write_h5ad_atomic(ref, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5ad"]


def test_per_cell_column_is_refused_as_fov_key(synthetic):
    """Issue 12: a numeric per-cell column chosen as FOV key froze napari for minutes."""
    from napari_spatial_impute.io.files import check_fov_key, find_fov_key, fov_labels

    _, spa = synthetic
    spa = ad.concat([spa] * 3, index_unique="-")  # 120 cells
    spa.obs["fov"] = np.repeat(["a", "b", "c"], spa.n_obs // 3)
    spa.obs["area"] = np.linspace(10.0, 30.0, spa.n_obs)  # fractional per-cell numbers
    spa.obs["cell_id"] = np.arange(spa.n_obs)  # whole numbers, one per cell
    spa.obs["slice"] = np.arange(spa.n_obs)  # a usual FOV name, but per cell
    for key in ("area", "cell_id"):
        with pytest.raises(InputError, match=rf"column '{key}' has .* distinct values .* per-cell"):
            check_fov_key(spa, key)
        with pytest.raises(InputError, match="not fields of view"):
            fov_labels(spa, key)
    assert len(fov_labels(spa, "fov").categories) == 3
    # auto-detection skips a usual name holding per-cell values and takes the real FOV column
    assert find_fov_key(spa) == "fov"
    del spa.obs["fov"]
    assert find_fov_key(spa) is None
    with pytest.raises(InputError, match="is not in the spatial obs"):
        find_fov_key(spa, "nope")
