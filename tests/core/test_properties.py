"""Property-based tests of the science core on small random reference/spatial pairs.

Each example builds a random pair (1-40 cells on each side, 1-15 genes, random sparsity, all-zero
rows and columns, random gene-name overlap and case, X as int/uint/float16/float32/float64/bool
in a dense ndarray, scipy ``csr_matrix``/``csc_matrix`` or ``csr_array`` (float16 stays dense:
scipy.sparse has no float16), cluster labels in ``obs`` (some with missing labels) and
``obsm["spatial"]``), maps it with a few epochs (exact and lean engines, cells and clusters
modes) and builds the result AnnData. Properties:

* the run either raises the package's :class:`~napari_spatial_impute.InputError` with a one-line
  message, or every output is finite (imputed values, both interval layers with 90 % >= 67 %,
  ``var["predicted_pearson"]`` in [-1, 1]) and every row of ``obsm["cluster_probabilities"]``
  sums to 1;
* the neighbourhood ensemble's weights are finite and row-stochastic;
* the X container (dense or sparse) does not change the result;
* a result written gene chunk by gene chunk reads back equal to the one in memory.

Profiles (hypothesis settings):

* ``ci`` (default): 150 derandomised examples per mapping property (the same examples every run);
  the file runs in about 30 s on a 2-core machine;
* ``thorough``: 2,000 random examples per mapping property (about 6 minutes), for a search by
  hand::

      HYPOTHESIS_PROFILE=thorough .venv/bin/python -m pytest tests/test_properties.py

Neither profile writes an example database into the working tree; a failure prints the
falsifying example and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import napari_spatial_impute as nsi
from napari_spatial_impute import InputError
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.core.neighbours import neighbour_weights

_COMMON = dict(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", max_examples=150, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=2000, **_COMMON)
pytestmark = pytest.mark.filterwarnings("ignore::napari_spatial_impute._errors.InputWarning")
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
#: the cheap property gets twice the examples, the two that map twice or write files half
CHEAP = settings(PROFILE, max_examples=PROFILE.max_examples * 2)
HEAVY = settings(PROFILE, max_examples=max(1, PROFILE.max_examples // 2))

DTYPES = (
    "int64",
    "int32",
    "int8",
    "uint64",
    "uint16",
    "uint8",
    "float16",
    "float32",
    "float64",
    "bool",
)
CONTAINERS = ("dense", "csr_matrix", "csc_matrix", "csr_array")


def _container(X: np.ndarray, kind: str):
    if kind == "dense" or X.dtype == np.float16:  # scipy.sparse has no float16
        return X
    if kind == "csr_matrix":
        return sp.csr_matrix(X)
    if kind == "csc_matrix":
        return sp.csc_matrix(X)
    return sp.csr_array(X)


def _values(
    rng: np.random.Generator,
    n: int,
    g: int,
    dtype: str,
    density: float,
    zero_rows: float,
    zero_cols: float,
    integer: bool,
    scale: float,
) -> np.ndarray:
    X = rng.gamma(0.7, 4.0, (n, g)) * (rng.random((n, g)) < density)
    if integer or np.dtype(dtype).kind in "iub":
        X = np.round(X)
    elif np.dtype(dtype).itemsize >= 4:
        X = X * scale  # non-integer float32/float64 values on another scale (1e-6 .. 1e6)
    X[rng.random(n) < zero_rows] = 0
    X[:, rng.random(g) < zero_cols] = 0
    if dtype == "bool":
        return X > 0
    return np.minimum(X, 200).astype(dtype)


@st.composite
def pairs(draw: st.DrawFn) -> tuple[ad.AnnData, ad.AnnData, dict]:
    """A random reference/spatial pair and a description of how it was drawn."""
    n_ref = draw(st.integers(1, 40), label="n_ref")
    n_sp = draw(st.integers(1, 40), label="n_sp")
    g_ref = draw(st.integers(1, 15), label="g_ref")
    g_sp = draw(st.integers(1, 15), label="g_sp")
    # one pair in ten shares no gene (refused); the others share at least one
    no_overlap = draw(st.sampled_from([False] * 9 + [True]), label="no overlap")
    n_shared = 0 if no_overlap else draw(st.integers(1, min(g_ref, g_sp)), label="n_shared")
    ref_genes = [f"Gene{i}" for i in range(g_ref)]
    order = draw(st.permutations(range(g_ref)), label="shared genes")
    cases = draw(
        st.lists(st.sampled_from(["same", "lower", "upper"]), min_size=n_shared, max_size=n_shared)
    )
    recase = {"same": str, "lower": str.lower, "upper": str.upper}
    sp_genes = [recase[c](ref_genes[i]) for c, i in zip(cases, order[:n_shared], strict=True)]
    sp_genes += [f"Probe{i}" for i in range(g_sp - n_shared)]
    sp_genes = draw(st.permutations(sp_genes), label="spatial gene order")
    desc = {
        "ref_dtype": draw(st.sampled_from(DTYPES)),
        "sp_dtype": draw(st.sampled_from(DTYPES)),
        "ref_container": draw(st.sampled_from(CONTAINERS)),
        "sp_container": draw(st.sampled_from(CONTAINERS)),
        "density": draw(st.sampled_from([0.5, 0.8, 1.0, 0.3] * 2 + [0.05])),
        "zero_rows": draw(st.sampled_from([0.0, 0.2, 0.5] * 3 + [1.0])),
        "zero_cols": draw(st.sampled_from([0.0, 0.3, 0.5] * 3 + [1.0])),
        "integer": draw(st.booleans()),
        "scale": draw(st.sampled_from([1.0, 1e-3, 1e3, 1e-6, 1e6])),
        "n_types": draw(st.integers(1, 4)),
        "label_kind": draw(st.sampled_from(["str", "category", "int", "bool", "with missing"])),
        "ndim": draw(st.sampled_from([2, 3])),
        "coords": draw(st.sampled_from(["float", "int", "frame", "one point"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }
    rng = np.random.default_rng(desc["seed"])
    args = (desc["density"], desc["zero_rows"], desc["zero_cols"], desc["integer"], desc["scale"])
    Xr = _values(rng, n_ref, g_ref, desc["ref_dtype"], *args)
    Xs = _values(rng, n_sp, g_sp, desc["sp_dtype"], *args)
    codes = rng.integers(0, desc["n_types"], n_ref)
    labels = {
        "str": pd.Series([f"T{c}" for c in codes]),
        "int": pd.Series(codes),
        "bool": pd.Series(codes % 2 == 0),
        "category": pd.Series(pd.Categorical([f"type {c}" for c in codes])),
        # a missing label is refused with an InputError (fill or drop those cells)
        "with missing": pd.Series([None if c == 0 else f"T{c}" for c in codes], dtype=object),
    }[desc["label_kind"]]
    ref = ad.AnnData(
        X=_container(Xr, desc["ref_container"]),
        obs=pd.DataFrame({"cell_type": labels.to_numpy()}, index=[f"r{i}" for i in range(n_ref)]),
        var=pd.DataFrame(index=ref_genes),
    )
    if desc["label_kind"] == "category":
        ref.obs["cell_type"] = ref.obs["cell_type"].astype("category")
    spa = ad.AnnData(
        X=_container(Xs, desc["sp_container"]),
        obs=pd.DataFrame(index=[f"s{i}" for i in range(n_sp)]),
        var=pd.DataFrame(index=list(sp_genes)),
    )
    xy = rng.random((n_sp, desc["ndim"])) * 100
    if desc["coords"] == "int":
        xy = np.round(xy).astype(np.int64)
    elif desc["coords"] == "one point":  # every cell at the same place
        xy = np.zeros_like(xy)
    spa.obsm["spatial"] = (
        pd.DataFrame(xy, index=spa.obs_names, columns=list("xyz")[: desc["ndim"]])
        if desc["coords"] == "frame"
        else xy
    )
    return ref, spa, desc


def _check_result(r: nsi.MappingResult, out: ad.AnnData, cluster_key: str | None) -> None:
    assert out.shape == (r.spatial.n_obs, r.reference.n_vars)
    assert np.all(np.isfinite(out.X)), "imputed values"
    if r.calibration is not None and out.uns["spatial_impute"]["projection"] == "neighbours":
        for name in ("interval_90_halfwidth", "interval_67_halfwidth"):
            hw = out.layers[name]
            assert np.all(np.isfinite(hw)) and np.all(hw >= 0), name
        assert np.all(out.layers["interval_90_halfwidth"] >= out.layers["interval_67_halfwidth"])
        pp = out.var["predicted_pearson"].to_numpy()
        assert np.all(np.isfinite(pp)) and np.all(np.abs(pp) <= 1), "predicted_pearson"
    assert np.all(np.isfinite(out.obs["mapped_share"].to_numpy()))
    assert np.all(np.isfinite(out.obsm["mapping_top_share"]))
    if cluster_key is not None:
        probs = out.obsm["cluster_probabilities"].to_numpy()
        assert np.all(np.isfinite(probs)) and np.all(probs >= 0)
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def _map_or_input_error(ref, spa, projection="auto", **kw):
    """``(result, result AnnData)``, or ``None`` when the input was refused with an InputError."""
    try:
        r = nsi.map_cells_to_space(ref, spa, **kw)
        return r, result_to_anndata(r, method=projection)
    except InputError as exc:
        msg = str(exc)
        event(f"InputError: {msg[:60]}")
        assert msg and "\n" not in msg, f"InputError message is not one line: {msg!r}"
        return None


# the lean engine maps single cells: mapping.py refuses clusters mode with it (an InputError);
# the ensemble map is made in cells mode only
@pytest.mark.parametrize(
    "map_method, mode, engine",
    [
        ("ensemble", "cells", "auto"),
        ("tangram", "cells", "exact"),
        ("tangram", "cells", "lean"),
        ("tangram", "clusters", "exact"),
    ],
)
@PROFILE
@given(
    data=pairs(),
    epochs=st.integers(3, 10),
    with_key=st.booleans(),
    candidates=st.integers(1, 8),
    transform=st.sampled_from(["none", "normalize_log1p"]),
    density=st.sampled_from(["uniform", "rna_count_based", "none"]),
    lambdas=st.sampled_from([(0.0, 0.0), (1.0, 0.0), (0.0, 0.01), (1.0, 0.01)]),
    projection=st.sampled_from(["auto"] * 4 + ["probabilistic", "argmax"]),
    uncertainty=st.sampled_from([True, True, True, False]),
)
def test_mapping_is_finite_or_refused(
    map_method,
    mode,
    engine,
    data,
    epochs,
    with_key,
    candidates,
    transform,
    density,
    lambdas,
    projection,
    uncertainty,
):
    ref, spa, _ = data
    key = "cell_type" if (with_key or mode == "clusters") else None
    got = _map_or_input_error(
        ref,
        spa,
        mode=mode,
        engine=engine,
        cluster_key=key,
        epochs=epochs,
        seed=0,
        candidates=candidates,
        reverse_candidates=min(candidates, 2),
        transform=transform,
        density=density,
        lambda_g2=lambdas[0],
        lambda_r=lambdas[1],
        projection=projection,
        method=map_method,
        uncertainty=uncertainty,
    )
    if got is not None:
        event(f"mapped ({got[0].params['engine']})")
        _check_result(*got, key)


@CHEAP
@given(
    n=st.integers(1, 40),
    s=st.integers(1, 40),
    g=st.integers(1, 15),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_neighbour_weights_are_row_stochastic(n, s, g, density, seed):
    rng = np.random.default_rng(seed)
    S = (rng.gamma(0.7, 4.0, (n, g)) * (rng.random((n, g)) < density)).astype(np.float32)
    G = (rng.gamma(0.7, 4.0, (s, g)) * (rng.random((s, g)) < density)).astype(np.float32)
    W = neighbour_weights(S, G)
    assert W.shape == (s, n)
    assert np.all(np.isfinite(W.data)) and np.all(W.data >= 0)
    np.testing.assert_allclose(np.asarray(W.sum(1)).ravel(), 1.0, rtol=1e-5)


@HEAVY
@given(data=pairs(), container=st.sampled_from(CONTAINERS))
def test_container_does_not_change_the_result(data, container):
    """The same values as a dense array or any sparse container map to the same result."""
    ref, spa, _ = data
    base = _map_or_input_error(ref, spa, epochs=4, seed=0, engine="exact")
    dense = ref.X.toarray() if sp.issparse(ref.X) else np.asarray(ref.X)
    ref2 = ref.copy()
    ref2.X = _container(dense, container)
    other = _map_or_input_error(ref2, spa, epochs=4, seed=0, engine="exact")
    assert (base is None) == (other is None)
    if base is not None:
        np.testing.assert_allclose(base[1].X, other[1].X, rtol=1e-5, atol=1e-6)
        for name in ("interval_90_halfwidth", "interval_67_halfwidth"):
            np.testing.assert_allclose(
                base[1].layers[name], other[1].layers[name], rtol=1e-5, atol=1e-6
            )


@HEAVY
@given(data=pairs(), chunk=st.integers(1, 6), mode=st.sampled_from(["cells", "clusters"]))
def test_chunked_write_matches_the_result_in_memory(data, chunk, mode):
    """write_result gene chunk by gene chunk gives the in-memory result's values and intervals."""
    import tempfile

    from napari_spatial_impute.core.export import write_result

    ref, spa, _ = data
    got = _map_or_input_error(ref, spa, mode=mode, cluster_key="cell_type", epochs=3, seed=0)
    if got is None:
        return
    r, out = got
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.h5ad")
        write_result(r, path, chunk_genes=chunk)
        back = ad.read_h5ad(path)
    # a Tangram map's Mᵀ S is a BLAS product whose rounding depends on the number of columns
    np.testing.assert_allclose(np.asarray(back.X), out.X, rtol=1e-5, atol=1e-6)
    for name, layer in out.layers.items():
        np.testing.assert_array_equal(np.asarray(back.layers[name]), layer)
    if "predicted_pearson" in out.var:  # the ensemble map (cells mode)
        np.testing.assert_array_equal(back.var["predicted_pearson"], out.var["predicted_pearson"])
    else:
        assert r.params["method"] == "tangram" and "predicted_pearson" not in back.var
    np.testing.assert_array_equal(
        back.obsm["cluster_probabilities"], out.obsm["cluster_probabilities"]
    )
