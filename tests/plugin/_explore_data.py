"""Shared test data of the exploration widgets: a MERFISH result with two samples of two FOVs."""

from __future__ import annotations

import functools
import warnings

import anndata as ad
import numpy as np

from napari_spatial_impute import load_merfish_hypothalamus, map_cells_to_space
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.viz.layers import META_KEY


@functools.lru_cache(maxsize=1)
def _pair_and_result() -> tuple[ad.AnnData, ad.AnnData, ad.AnnData]:
    ref, spa = load_merfish_hypothalamus()
    x = spa.obsm["spatial"][:, 0]
    q = np.quantile(x, [0.25, 0.5, 0.75])
    spa.obs["fov"] = np.array(["1", "2", "3", "4"])[np.searchsorted(q, x)]
    spa.obs["sample"] = np.where(x < q[1], "A", "B")  # apart in space: drawn where they are
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = result_to_anndata(map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=30))
    return ref, spa, res


def merfish_with_fovs() -> tuple[ad.AnnData, ad.AnnData, ad.AnnData]:
    """(reference, spatial, result) copies; obs ``sample`` "A"/"B" split at the median x, each
    of two FOVs (obs ``fov`` "1", "2" in A and "3", "4" in B, split at the x quartiles)."""
    ref, spa, res = _pair_and_result()
    return ref.copy(), spa.copy(), res.copy()


@functools.lru_cache(maxsize=1)
def _tangram_result() -> ad.AnnData:
    ref, spa, _ = _pair_and_result()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = map_cells_to_space(ref, spa, method="tangram", cluster_key="cell_type", epochs=30)
    return result_to_anndata(res, genes=list(ref.var_names[:20]))


def tangram_result() -> ad.AnnData:
    """A Tangram map's result of the same pair (30 epochs; 20 genes imputed), a copy."""
    return _tangram_result().copy()


def explore_in(viewer, qtbot):
    """The MERFISH result loaded into ``viewer`` and an Explore widget on it: ``(model, widget)``."""
    from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget

    model = load_into(viewer)
    widget = ExploreWidget(viewer)
    qtbot.addWidget(widget)
    return model, widget


def load_into(viewer, with_cv: bool = False):
    """Put the reference, spatial data, keys and result into the viewer's model."""
    from napari_spatial_impute.plugin.model import get_model

    ref, spa, res = merfish_with_fovs()
    model = get_model(viewer)
    model.set_reference(ref)
    model.set_spatial(spa)
    model.set_keys(cluster_key="cell_type", fov_key="fov", sample_key="sample")
    model.set_result(res)
    return model


@functools.lru_cache(maxsize=1)
def _cv_table():
    from napari_spatial_impute import cross_validate

    ref, spa, _ = _pair_and_result()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cross_validate(ref, spa, folds=3, epochs=10, uncertainty=True)


def cv_table():
    """A real 3-fold cross-validation table of the MERFISH pair (10 epochs per fold)."""
    return _cv_table().copy()


def add_reference_layer(viewer, reference, shuffled: bool = False):
    """A reference Points layer like the core plugin's (metadata ``kind == "reference"``).

    Coordinates are the first two principal components of log counts (a stand-in for a UMAP).
    With ``shuffled`` the points are in another order, given by the metadata's ``rows``.
    """
    import scipy.sparse as sps

    X = reference.X.toarray() if sps.issparse(reference.X) else np.asarray(reference.X)
    X = np.log1p(X)
    X = X - X.mean(0)
    u, s, _ = np.linalg.svd(X, full_matrices=False)
    pcs = u[:, :2] * s[:2]
    order = (
        np.random.default_rng(0).permutation(reference.n_obs)
        if shuffled
        else np.arange(reference.n_obs)
    )
    md = {"kind": "reference"}
    if shuffled:
        md["rows"] = order
    return viewer.add_points(
        pcs[order][:, ::-1] * 10,
        name="reference UMAP",
        size=1.0,
        metadata={META_KEY: md},
        translate=(500.0, -300.0),
    )
