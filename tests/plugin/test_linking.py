"""Linked selections between spatial layers and the reference layer."""

from __future__ import annotations

import numpy as np
import pytest
from _explore_data import add_reference_layer
from napari.utils.status_messages import format_feature_value

from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget
from napari_spatial_impute.plugin.widgets.linking import (
    REFERENCE_HIGHLIGHT,
    SPATIAL_HIGHLIGHT,
    get_link_controller,
)
from napari_spatial_impute.viz.explore import (
    reference_weights,
    spatial_rows_for_reference,
    unit_matrix,
)
from napari_spatial_impute.viz.layers import plugin_meta


@pytest.fixture
def setup(make_widget):
    return make_widget(ExploreWidget)


@pytest.mark.parametrize("shuffled", [False, True])
def test_spatial_selection_highlights_reference_cells(setup, qtbot, shuffled):
    viewer, model, w = setup
    ref_layer = add_reference_layer(viewer, model.reference, shuffled=shuffled)
    layer = w.show_gene("Gad1")[0]
    ctl = get_link_controller(viewer)
    viewer.layers.selection.active = layer  # the user selects in this layer
    layer.selected_data = {0, 1, 2}
    qtbot.waitUntil(
        lambda: REFERENCE_HIGHLIGHT in [lay.name for lay in viewer.layers], timeout=2000
    )
    hl = viewer.layers[REFERENCE_HIGHLIGHT]
    rows = plugin_meta(layer)["rows"][[0, 1, 2]]
    expected = reference_weights(model.result, model.reference, rows)
    shown = expected.iloc[: ctl.max_reference_cells]
    assert len(hl.data) == len(shown) > 0
    assert set(hl.features["cell"]) == set(model.reference.obs_names[shown.index])
    # rings grow with the mapped share
    sizes = np.asarray(hl.size)
    assert sizes[np.argmax(hl.features["mapped share"])] == sizes.max()
    # the highlight sits on the reference points (same transform, same positions)
    assert np.allclose(hl.translate, ref_layer.translate)
    pos = {tuple(p) for p in np.round(ref_layer.data, 6)}
    assert all(tuple(p) in pos for p in np.round(hl.data, 6))
    # the top-share reference cell is drawn where the reference layer draws it
    top = expected.index[0]
    point = np.flatnonzero(plugin_meta(ref_layer)["rows"] == top)[0] if shuffled else top
    i = list(hl.features["cell"]).index(model.reference.obs_names[top])
    assert np.allclose(hl.data[i], ref_layer.data[point])
    # the user's layer stays active
    assert viewer.layers.selection.active.name == layer.name
    # clearing the selection empties the highlight, found by metadata even when renamed
    hl.name = "renamed highlight"
    layer.selected_data = set()
    ctl.flush()
    qtbot.wait(100)
    assert len(hl.data) == 0 and hl in viewer.layers
    layer.selected_data = {0, 1}
    ctl.flush()
    qtbot.wait(100)
    assert len(hl.data) > 0 and REFERENCE_HIGHLIGHT not in [lay.name for lay in viewer.layers]


def test_reference_selection_shows_cluster_probability(setup, qtbot):
    viewer, model, w = setup
    ref_layer = add_reference_layer(viewer, model.reference)
    labels = model.reference.obs["cell_type"].astype(str).to_numpy()
    cluster = labels[0]
    chosen = np.flatnonzero(labels == cluster)[:20]
    ref_layer.selected_data = set(chosen.tolist())
    ctl = get_link_controller(viewer)
    ctl.flush()
    names = [lay.name for lay in viewer.layers]
    assert f"{cluster} probability" in names  # one layer, both samples
    hl = viewer.layers[SPATIAL_HIGHLIGHT]
    rows = spatial_rows_for_reference(model.result, model.reference, chosen)
    assert len(hl.data) == len(rows)
    assert set(hl.features["cell"]) == set(model.result.obs_names[rows])
    # the marks sit on the cells where their sample's probability layer draws them
    drawn = {}
    for lay in viewer.layers:
        if plugin_meta(lay).get("kind") == "probability":
            world = np.asarray(lay.data) + np.asarray(lay.translate)
            drawn.update(zip(lay.features["cell"], world, strict=True))
    assert len(drawn) == model.result.n_obs  # the two samples' layers hold every cell once
    for cell, point in zip(hl.features["cell"], np.asarray(hl.data) + hl.translate, strict=True):
        assert np.allclose(point, drawn[cell])
    # another cluster recolours the same probability layers
    other = next(c for c in np.unique(labels) if c != cluster)
    n_layers = len(viewer.layers)
    ref_layer.selected_data = set(np.flatnonzero(labels == other)[:5].tolist())
    ctl.flush()
    assert len(viewer.layers) == n_layers
    names = [lay.name for lay in viewer.layers]
    assert f"{other} probability" in names


def test_linking_can_be_switched_off(setup, qtbot):
    viewer, model, w = setup
    add_reference_layer(viewer, model.reference)
    layer = w.show_gene("Gad1")[0]
    w.link_check.setChecked(False)
    layer.selected_data = {0}
    qtbot.wait(150)
    assert REFERENCE_HIGHLIGHT not in [lay.name for lay in viewer.layers]
    w.link_check.setChecked(True)


def test_no_reference_layer_is_harmless(setup, qtbot):
    viewer, model, w = setup
    layer = w.show_gene("Gad1")[0]
    layer.selected_data = {0, 1}
    get_link_controller(viewer).flush()
    assert REFERENCE_HIGHLIGHT not in [lay.name for lay in viewer.layers]


def test_hover_status_shows_value_interval_fov_and_top_clusters(setup):
    viewer, model, w = setup
    res = model.result
    probs = res.obsm["cluster_probabilities"]
    j = res.var_names.get_loc("Gad1")
    layers = [lay for lay in w.show_gene("Gad1") if plugin_meta(lay)["kind"] == "imputed"]
    assert sorted(set(layers[0].features["sample"].astype(str))) == ["A", "B"]  # one layer
    fovs_seen = set()
    for layer in layers:  # a cell of each FOV of each sample, hovered where it is drawn
        fov_of_point = layer.features["fov"].astype(str).to_numpy()
        for fov in np.unique(fov_of_point):
            point = np.flatnonzero(fov_of_point == fov)[0]
            pos = tuple(np.asarray(layer.data[point]) + np.asarray(layer.translate))
            text = layer.get_status(pos, world=True)["coordinates"]
            hovered = layer.get_value(pos, world=True)  # overlapping points: the top one
            row = int(plugin_meta(layer)["rows"][hovered])
            assert res.obs_names[row] in text
            value = np.float32(np.asarray(res.X[row, j]).ravel()[0])
            assert f"Gad1: {format_feature_value(value)}" in text
            half = np.float32(res.layers["interval_90_halfwidth"][row, j])
            assert f"90% interval ±: {format_feature_value(half)}" in text
            fov = str(res.obs["fov"].iloc[row])
            assert f"fov: {fov}" in text
            fovs_seen.add(fov)
            p = probs.iloc[row].to_numpy(dtype=np.float32)
            first, second = np.argsort(-p, kind="stable")[:2]
            assert f"top cluster: {probs.columns[first]}" in text
            assert f"p: {format_feature_value(p[first])}" in text
            assert f"2nd cluster: {probs.columns[second]}" in text
            assert f"p 2nd: {format_feature_value(p[second])}" in text
    assert fovs_seen == {"1", "2", "3", "4"}  # the FOVs of both samples


def test_clusters_mode_units(setup):
    viewer, model, w = setup
    from napari_spatial_impute import map_cells_to_space

    res = result_to_anndata(
        map_cells_to_space(
            model.reference, model.spatial, cluster_key="cell_type", mode="clusters", epochs=10
        )
    )
    units = unit_matrix(res, model.reference)
    assert units.shape == (len(res.uns["spatial_impute"]["units"]), model.reference.n_obs)
    assert np.allclose(np.asarray(units.sum(1)).ravel(), 1.0)
    w_ = reference_weights(res, model.reference, [0, 1], units)
    assert np.isclose(w_.sum(), res.obsm["mapping_top_share"][[0, 1]].sum())


def test_core_layers_take_part(setup, qtbot):
    """The core plugin's layers (``layers.py``): reference UMAP and plain spatial layers link too."""
    viewer, model, w = setup
    from napari_spatial_impute.viz.layers import reference_layer, spatial_layers

    ref = model.reference.copy()
    ref.obsm["X_umap"] = np.random.default_rng(0).random((ref.n_obs, 2)) * 10
    data, kwargs, _ = reference_layer(ref, cluster_key="cell_type")
    viewer.add_points(data, **kwargs)
    tuples = spatial_layers(model.spatial, fov_key="fov", role="spatial")  # every sample
    assert [kw["name"] for _, kw, _ in tuples] == ["spatial"]
    (layer,) = [viewer.add_points(data, **kwargs) for data, kwargs, _ in tuples]
    # cells of sample B: their rows in the data set, not their points in the layer
    in_b = np.flatnonzero(layer.features["sample"].astype(str) == "B")
    assert in_b[0] > 0
    layer.selected_data = set(in_b[:2].tolist())
    ctl = get_link_controller(viewer)
    ctl.flush()
    hl = viewer.layers[REFERENCE_HIGHLIGHT]
    rows = plugin_meta(layer)["rows"][in_b[:2]]
    assert (model.spatial.obs["sample"].iloc[rows] == "B").all()
    shown = reference_weights(model.result, model.reference, rows).iloc[: ctl.max_reference_cells]
    assert len(hl.data) == len(shown) > 0
    assert set(hl.features["cell"]) == set(model.reference.obs_names[shown.index])
