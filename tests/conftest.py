"""Shared fixtures: the bundled MERFISH pair, the shared real-data folder, seeded synthetic data."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pytest

from _data import make_synthetic
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


@pytest.fixture
def synthetic() -> tuple[ad.AnnData, ad.AnnData]:
    return make_synthetic()
