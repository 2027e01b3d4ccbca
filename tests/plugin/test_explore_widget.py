"""Explore widget on the MERFISH pair with two FOVs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _explore_data import load_into

from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget
from napari_spatial_impute.viz.explore import robust_limits, values
from napari_spatial_impute.viz.layers import plugin_meta


@pytest.fixture
def widget(make_widget):
    return make_widget(ExploreWidget)


def test_lists_filled_from_model(widget):
    viewer, model, w = widget
    assert w.fov_list.count() == 2
    assert w.cluster_combo.count() == len(model.result.obsm["cluster_probabilities"].columns)
    assert w.completer.model().rowCount() == model.result.n_vars
    assert w.gene_button.isEnabled()


def test_gene_layers_per_fov_with_shared_limits(widget):
    viewer, model, w = widget
    w.gene_edit.setText("gad1")  # any case
    layers = w.show_gene()
    names = sorted(layer.name for layer in viewer.layers)
    assert names == sorted(
        [
            "Gad1 imputed · FOV 1",
            "Gad1 imputed · FOV 2",
            "Gad1 measured · FOV 1",
            "Gad1 measured · FOV 2",
        ]
    )
    imputed = [lay for lay in layers if plugin_meta(lay)["kind"] == "imputed"]
    measured = [lay for lay in layers if plugin_meta(lay)["kind"] == "measured"]
    assert len(imputed) == 2 and len(measured) == 2
    assert imputed[0].face_contrast_limits == imputed[1].face_contrast_limits
    assert measured[0].face_contrast_limits == measured[1].face_contrast_limits
    lo, hi = robust_limits(values(model.result, "imputed", "Gad1"))
    assert np.allclose(imputed[0].face_contrast_limits, (lo, hi))
    for layer in layers:
        assert layer.face_color_mode == "colormap"
        assert "Gad1" in layer.features.columns
        assert layer.features["Gad1"].dtype == np.float32
        assert {"cell", "top imputed", "top clusters"} <= set(layer.features.columns)
    # issue 12: one colour bar, the selected layer's, titled with the gene, kind and units
    shown = [lay.name for lay in layers if lay.face_colorbar.visible]
    assert shown == [viewer.layers.selection.active.name]
    n = sum(len(layer.data) for layer in imputed)
    assert n == model.result.n_obs
    # the values are those of the cells at those positions
    rows = plugin_meta(imputed[0])["rows"]
    assert np.allclose(imputed[0].features["Gad1"], values(model.result, "imputed", "Gad1")[rows])
    assert np.allclose(imputed[0].data[:, ::-1], model.result.obsm["spatial"][rows])


def test_regene_recolours_instead_of_adding(widget):
    viewer, model, w = widget
    first = w.show_gene("Gad1")
    ids = {id(layer) for layer in first}
    second = w.show_gene("Slc17a6")
    assert len(viewer.layers) == 4
    assert {id(layer) for layer in second} == ids
    assert sorted(layer.name for layer in viewer.layers)[0].startswith("Slc17a6")
    imputed = [lay for lay in second if plugin_meta(lay)["kind"] == "imputed"]
    assert all("Slc17a6" in lay.features.columns for lay in imputed)
    assert "Gad1" not in imputed[0].features.columns


def test_recolour_to_unmeasured_removes_measured(widget):
    viewer, model, w = widget
    # the bundled reference holds only panel genes: pretend one was not measured
    model.result.var.loc["Slc17a6", "is_shared"] = False
    model.result.var.loc["Slc17a6", "measured_name"] = ""
    w.show_gene("Gad1")
    assert len(viewer.layers) == 4
    w.show_gene("Slc17a6")
    assert sorted(lay.name for lay in viewer.layers) == [
        "Slc17a6 imputed · FOV 1",
        "Slc17a6 imputed · FOV 2",
    ]


def test_add_new_layers_when_recolour_off(widget):
    viewer, model, w = widget
    w.recolor_check.setChecked(False)
    w.measured_check.setChecked(False)
    w.show_gene("Gad1")
    w.show_gene("Slc17a6")
    assert len(viewer.layers) == 4
    w.show_gene("Slc17a6")  # same names: recoloured, not duplicated
    assert len(viewer.layers) == 4


def test_one_fov_cluster_and_predicted(widget):
    viewer, model, w = widget
    w.fov_list.item(1).setSelected(True)
    cluster = w.cluster_combo.itemText(0)
    layers = w.show_cluster(cluster)
    assert [layer.name for layer in layers] == [f"{cluster} probability · FOV 2"]
    lo, hi = layers[0].face_contrast_limits
    assert lo == 0.0 and 0 < hi <= 1.0
    pred = w.show_predicted()
    assert pred[0].name == "most likely cell_type · FOV 2"
    assert pred[0].face_color_mode == "cycle"
    assert str(pred[0].features["cell_type"].dtype) == "category"
    # a second cluster recolours the probability layer
    other = w.cluster_combo.itemText(1)
    again = w.show_cluster(other)
    assert again[0] is layers[0] and again[0].name == f"{other} probability · FOV 2"


def test_unknown_gene_is_notified_not_added(widget, monkeypatch):
    viewer, model, w = widget
    seen = []
    monkeypatch.setattr("napari_spatial_impute.plugin.widgets.layer_ops.show_error", seen.append)
    assert w.show_gene("NotAGene") == []
    assert len(viewer.layers) == 0
    assert seen and "NotAGene" in seen[0] and "\n" not in seen[0]


def test_navigator_centres_camera(widget):
    viewer, model, w = widget
    w.show_gene("Gad1")
    w.go_to_fov("2")
    rows = viewer.layers["Gad1 imputed · FOV 2"].data
    center = viewer.scene.camera.center[-2:]
    mid = (rows.min(0) + rows.max(0)) / 2
    assert np.allclose(center, mid, atol=1e-6 + 1e-3 * np.ptp(rows))
    # without layers the camera still moves to the FOV's box
    viewer.layers.clear()
    w.go_to_fov("1")
    assert np.isfinite(viewer.scene.camera.zoom)


def test_grid_toggle(widget):
    viewer, model, w = widget
    w.grid_check.setChecked(True)
    assert viewer.grid.enabled
    w.grid_check.setChecked(False)
    assert not viewer.grid.enabled


def test_no_result_disables(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    w = ExploreWidget(viewer)
    qtbot.addWidget(w)
    assert not w.gene_button.isEnabled()
    assert w.show_gene("Gad1") == []


@pytest.mark.skipif(
    os.environ.get("QT_QPA_PLATFORM") == "offscreen", reason="needs a real (Xvfb) display"
)
def test_rendered_points_are_colour_mapped(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    load_into(viewer)
    w = ExploreWidget(viewer)
    qtbot.addWidget(w)
    w.measured_check.setChecked(False)
    w.show_gene("Gad1")
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    rgb = shot[..., :3].astype(int)
    coloured = (np.abs(rgb - rgb.mean(-1, keepdims=True)).max(-1) > 30).sum()
    assert coloured > 500, "no colour-mapped points rendered"
    # several distinct colours (a colormap, not one flat colour)
    assert (
        len(np.unique(rgb[(np.abs(rgb - rgb.mean(-1, keepdims=True)).max(-1) > 30)] // 32, axis=0))
        > 3
    )


def test_large_fovs_build_in_a_worker(widget, qtbot, monkeypatch):
    viewer, model, w = widget
    monkeypatch.setattr("napari_spatial_impute.plugin.widgets.explore_widget.ASYNC_CELLS", 10)
    assert w.show_gene("Gad1") == []  # returns at once, the layers come later
    assert not w.gene_button.isEnabled()
    qtbot.waitUntil(lambda: len(viewer.layers) == 4 and w.gene_button.isEnabled(), timeout=20_000)
    assert w.status.text() == "Gad1: 4 layers"
    # an error in the worker is a notification and adds nothing
    seen = []
    monkeypatch.setattr(
        "napari_spatial_impute.plugin.widgets.explore_widget.notify_error", seen.append
    )
    w.show_gene("NotAGene")
    qtbot.waitUntil(lambda: bool(seen) and w.gene_button.isEnabled(), timeout=20_000)
    assert "NotAGene" in str(seen[0])
    assert len(viewer.layers) == 4


@pytest.mark.parametrize("display_name", ["Explore", "Diagnostics", "Label images"])
def test_widgets_open_from_the_plugin_menu(make_napari_viewer, qtbot, display_name):
    viewer = make_napari_viewer()
    load_into(viewer)
    _, widget = viewer.window.add_plugin_dock_widget("napari-spatial-impute", display_name)
    assert widget.model.result is not None
    if display_name == "Explore":
        assert widget.show_gene("Gad1")


def test_layers_follow_a_new_result(widget):
    viewer, model, w = widget
    from napari_spatial_impute import map_cells_to_space

    gene_layers = w.show_gene("Gad1")
    prob = w.show_cluster(w.cluster_combo.itemText(0))
    pred = w.show_predicted()
    n = len(viewer.layers)
    new = map_cells_to_space(
        model.reference, model.spatial, cluster_key="cell_type", epochs=3
    ).to_anndata()
    model.set_result(new)
    assert len(viewer.layers) == n
    layer = gene_layers[0]
    rows = plugin_meta(layer)["rows"]
    assert np.allclose(layer.features["Gad1"], values(new, "imputed", "Gad1")[rows])
    assert np.allclose(layer.face_contrast_limits, robust_limits(values(new, "imputed", "Gad1")))
    cl = plugin_meta(prob[0])["value"]
    assert np.allclose(
        prob[0].features[cl], values(new, "probability", cl)[plugin_meta(prob[0])["rows"]]
    )
    assert list(pred[0].features["cell_type"]) == list(
        new.obs["cell_type_predicted"].astype(str)[plugin_meta(pred[0])["rows"]]
    )
    model.set_result(None)
    assert len(viewer.layers) == 0


def test_tooltip_toggle(widget):
    from napari.settings import get_settings

    viewer, model, w = widget
    before = get_settings().appearance.layer_tooltip_visibility
    try:
        w.tooltip_check.setChecked(True)
        assert get_settings().appearance.layer_tooltip_visibility
        w.tooltip_check.setChecked(False)
        assert not get_settings().appearance.layer_tooltip_visibility
    finally:
        get_settings().appearance.layer_tooltip_visibility = before


def test_second_result_keeps_the_first_results_layers(widget, tmp_path):
    """Issue 10 (8): opening a second result silently removed the first result's gene layers.
    Those the new result cannot show (here: it lacks the gene) are kept unchanged, detached from
    the new result, renamed, and a warning says so."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    from napari_spatial_impute.plugin.sync import connect_model

    viewer, model, w = widget
    connect_model(viewer)  # as the plugin's reader does: opened results reach the model
    first = model.result
    gad1 = w.show_gene("Gad1")
    sst = w.show_gene("Sp9")  # recolours the Gad1 layers: keep references to both
    assert sst == gad1 and len(viewer.layers) == 4  # imputed + measured, 2 FOVs
    before = {layer.name: layer.features.copy() for layer in viewer.layers}
    second = first[:, [g for g in first.var_names if g != "Sp9"]].copy()
    path = tmp_path / "second.h5ad"
    second.write_h5ad(path)
    n_notes = len(notification_manager.records)
    opened = viewer.open(str(path), plugin="napari-spatial-impute")
    assert model.result is not first and "Sp9" not in model.result.var_names
    kept = [layer for layer in viewer.layers if layer not in opened]
    assert len(kept) == 4, "the first result's gene layers are still there"
    for layer in kept:
        assert layer.name.endswith(" (previous result)")
        old_name = layer.name.removesuffix(" (previous result)")
        assert layer.features.equals(before[old_name]), "with the first result's values"
        assert plugin_meta(layer)["kind"] == "previous result" and "rows" not in plugin_meta(layer)
        assert plugin_meta(layer)["previous"]["value"] == "Sp9"
    notes = notification_manager.records[n_notes:]
    assert any(
        n.severity == NotificationSeverity.WARNING
        and "4 layers of the previous result kept" in str(n.message)
        for n in notes
    )
    # the kept layers are not recoloured by later genes or results
    w.show_gene("Gad1")
    assert all(
        layer in viewer.layers and layer.name.endswith("(previous result)") for layer in kept
    )
    model.set_result(first)
    assert all(
        layer.features.equals(before[layer.name.removesuffix(" (previous result)")])
        for layer in kept
    )


def test_renamed_layers_are_still_recoloured(widget):
    """Layers are matched by metadata: a layer the user renamed (or napari renamed with
    "[1]") is still the one recoloured, and no duplicate appears."""
    viewer, model, w = widget
    w.recolor_check.setChecked(False)
    layers = w.show_gene("Gad1")
    layers[0].name = "my Gad1"
    again = w.show_gene("Gad1")
    assert again[0] is layers[0] and len(viewer.layers) == 4
    pred = w.show_predicted()
    pred[0].name = "renamed"
    again = w.show_predicted()
    assert len(viewer.layers) == 6 and "renamed" not in [layer.name for layer in viewer.layers]


def test_fov_outlines_are_one_shapes_layer_with_names(widget):
    """Issue 12: every FOV's outline and name in one layer; again replaces it."""
    from napari.layers import Shapes

    from napari_spatial_impute.viz.explore import fov_rows
    from napari_spatial_impute.viz.layers import to_napari

    viewer, model, w = widget
    layer = w.show_fov_outlines()
    assert isinstance(layer, Shapes) and len(viewer.layers) == 1
    fovs = list(fov_rows(model.result, model.fov_key))
    assert list(layer.features["fov"]) == fovs and len(layer.data) == len(fovs)
    for box, fov in zip(layer.data, fovs, strict=True):
        yx = to_napari(model.result, fov_rows(model.result, model.fov_key)[fov], ndim=2)
        # the layer keeps float32 corners: allow their rounding
        assert np.all(yx >= box.min(0) - 1e-3) and np.all(yx <= box.max(0) + 1e-3)
    w.show_fov_outlines()
    assert len(viewer.layers) == 1 and plugin_meta(viewer.layers[0])["kind"] == "fov_outlines"
    w.gene_edit.setText("Gad1")
    assert w.show_gene()  # the other layers still come and go as before
