"""Shared fixtures: the bundled MERFISH pair, the shared real-data folder, seeded synthetic data."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_spatial_impute.io.datasets import load_merfish_hypothalamus, shared_data_dir


@pytest.fixture(scope="session")
def merfish_pair() -> tuple[ad.AnnData, ad.AnnData]:
    """The bundled MERFISH hypothalamus pair (reference, spatial); copies are cheap to make."""
    return load_merfish_hypothalamus()


@pytest.fixture
def merfish(merfish_pair) -> tuple[ad.AnnData, ad.AnnData]:
    ref, spa = merfish_pair
    return ref.copy(), spa.copy()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests using it skip when it is absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("../shared/data is not present (set NSI_DATA_DIR to run real-data tests)")
    return d


def make_synthetic(
    n_ref: int = 60,
    n_sp: int = 40,
    n_genes: int = 12,
    n_types: int = 3,
    seed: int = 0,
    extra_ref_genes: int = 3,
    sparse: bool = True,
) -> tuple[ad.AnnData, ad.AnnData]:
    """A small seeded reference/spatial pair with cell types that have distinct programs."""
    rng = np.random.default_rng(seed)
    n_all = n_genes + extra_ref_genes
    programs = (
        rng.gamma(1.0, 1.0, size=(n_types, n_all)) * (rng.random((n_types, n_all)) < 0.5) + 0.05
    )
    ref_types = rng.integers(0, n_types, n_ref)
    sp_types = rng.integers(0, n_types, n_sp)
    ref_X = rng.poisson(programs[ref_types] * 5).astype(np.float32)
    sp_X = rng.poisson(programs[sp_types][:, :n_genes] * 3).astype(np.float32)
    genes = [f"Gene{i}" for i in range(n_all)]
    ref = ad.AnnData(
        X=sp.csr_matrix(ref_X) if sparse else ref_X,
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical([f"T{t}" for t in ref_types])},
            index=[f"r{i}" for i in range(n_ref)],
        ),
        var=pd.DataFrame(index=genes),
    )
    spa = ad.AnnData(
        X=sp.csr_matrix(sp_X) if sparse else sp_X,
        obs=pd.DataFrame(
            {"true_type": [f"T{t}" for t in sp_types], "fov": rng.integers(0, 2, n_sp).astype(str)},
            index=[f"s{i}" for i in range(n_sp)],
        ),
        var=pd.DataFrame(index=[g.lower() for g in genes[:n_genes]]),
    )
    spa.obsm["spatial"] = rng.random((n_sp, 2)) * 100
    return ref, spa


@pytest.fixture
def synthetic() -> tuple[ad.AnnData, ad.AnnData]:
    return make_synthetic()
