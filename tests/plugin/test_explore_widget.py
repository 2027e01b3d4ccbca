"""Explore widget on the MERFISH pair: two samples of two FOVs each (one layer per role for
both samples, the FOVs navigated)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _explore_data import load_into

from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget
from napari_spatial_impute.viz.explore import robust_limits, values
from napari_spatial_impute.viz.layers import plugin_meta
from napari_spatial_impute.viz.sections import display_yx, fov_rows


@pytest.fixture
def widget(make_widget):
    return make_widget(ExploreWidget)


def test_lists_filled_from_model(widget):
    viewer, model, w = widget
    assert [w.navigator.fov_list.item(i).text() for i in range(4)] == ["1", "2", "3", "4"]
    assert w.cluster_combo.count() == len(model.result.obsm["cluster_probabilities"].columns)
    assert w.completer.model().rowCount() == model.result.n_vars
    assert w.gene_button.isEnabled()
    assert ", 2 samples, 4 FOVs;" in w.info.text()


def test_gene_layers_one_per_role_for_every_sample(widget):
    """Issue 24: one layer per role holds every sample, coloured directly (an RGBA array) with
    the colormap and quantile limits of the value, the sample and FOV as features."""
    from napari.utils.colormaps import ensure_colormap

    viewer, model, w = widget
    w.gene_edit.setText("gad1")  # any case
    layers = w.show_gene()
    assert sorted(layer.name for layer in viewer.layers) == ["Gad1 imputed", "Gad1 measured"]
    imputed, measured = (
        next(lay for lay in layers if plugin_meta(lay)["kind"] == k)
        for k in ("imputed", "measured")
    )
    lo, hi = robust_limits(values(model.result, "imputed", "Gad1"))
    assert np.allclose(plugin_meta(imputed)["limits"], (lo, hi))
    for layer in layers:
        assert layer.face_color_mode == "direct"
        assert "Gad1" in layer.features.columns
        assert layer.features["Gad1"].dtype == np.float32
        assert {"cell", "fov", "sample", "top cluster", "p"} <= set(layer.features.columns)
        assert len(layer.data) == model.result.n_obs
    # the colours are napari's own colormap at those limits (to a 256-step table's precision)
    vals = imputed.features["Gad1"].to_numpy()
    expected = ensure_colormap("viridis").map(np.clip((vals - lo) / (hi - lo), 0, 1))
    assert np.abs(np.asarray(imputed.face_color) - expected).max() < 0.02
    # the FOV and sample are features: two FOVs in each sample
    feats = imputed.features
    assert set(feats["fov"][feats["sample"] == "A"].astype(str)) == {"1", "2"}
    assert set(feats["fov"][feats["sample"] == "B"].astype(str)) == {"3", "4"}
    # the values are those of the cells at those positions
    rows = plugin_meta(imputed)["rows"]
    assert sorted(rows) == list(range(model.result.n_obs))
    assert np.allclose(imputed.features["Gad1"], values(model.result, "imputed", "Gad1")[rows])
    assert np.allclose(imputed.data[:, ::-1], model.result.obsm["spatial"][rows])
    assert np.allclose(imputed.translate, 0)  # samples apart in space stay where they are
    # what is shown is told to the model: values and exact colours per result row
    shown = model.shown
    assert shown.kind == "imputed" and shown.name == "Gad1" and shown.colormap == "viridis"
    assert np.allclose(shown.values[rows], vals) and np.allclose(shown.limits, (lo, hi))
    assert np.array_equal(shown.rgba[rows], np.asarray(imputed.face_color, dtype=np.float32))


def test_a_switch_recolours_with_one_colour_setter(widget, monkeypatch):
    """Issue 24: a gene switch recolours each layer with one face_color setter, no features
    reset and no colormap or contrast-limit setter (napari's colormap path recolours every
    point per setter); the outlines are not recoloured (nothing was added)."""
    from napari.layers import Points, Shapes

    viewer, model, w = widget
    w.navigator.others.setCurrentText("dimmed")
    w.go_to_fov("2")
    layers = w.show_gene("Gad1")
    calls = {"face_color": 0, "features": 0, "face_colormap": 0, "face_contrast_limits": 0}

    def counting(cls, name):
        prop = getattr(cls, name)

        def setter(self, value):
            calls[name] += 1
            prop.fset(self, value)

        monkeypatch.setattr(cls, name, property(prop.fget, setter))

    for name in calls:
        counting(Points, name)
    shapes = {"face_color": 0}
    face = Shapes.face_color
    monkeypatch.setattr(
        Shapes,
        "face_color",
        property(face.fget, lambda self, v: (shapes.update(n=1), face.fset(self, v))),
    )
    w.show_gene("Slc17a6")
    assert calls == {
        "face_color": len(layers),  # one setter per layer
        "features": 0,
        "face_colormap": 0,
        "face_contrast_limits": 0,
    }
    assert shapes == {"face_color": 0}
    imputed = next(lay for lay in layers if plugin_meta(lay)["kind"] == "imputed")
    assert "Gad1" not in imputed.features.columns
    rows = plugin_meta(imputed)["rows"]
    new = values(model.result, "imputed", "Slc17a6")[rows]
    assert np.allclose(imputed.features["Slc17a6"], new)
    lo, hi = plugin_meta(imputed)["limits"]
    from napari_spatial_impute.viz.explore import colorize

    assert np.array_equal(imputed.face_color, colorize(new, "viridis", (lo, hi)))
    # the hover reads the new value
    pos = tuple(np.asarray(imputed.data[0]))
    assert "Slc17a6:" in imputed.get_status(pos, world=True)["coordinates"]


def test_switching_genes_recolours_and_keeps_the_layer_count(widget):
    viewer, model, w = widget
    first = w.show_gene("Gad1")
    ids = {id(layer) for layer in first}
    for gene in ("Slc17a6", "Sp9", "Gad1", "Oxtr"):
        again = w.show_gene(gene)
        assert len(viewer.layers) == 2
        assert {id(layer) for layer in again} == ids
    assert sorted(layer.name for layer in viewer.layers)[0].startswith("Oxtr")
    imputed = [lay for lay in again if plugin_meta(lay)["kind"] == "imputed"]
    assert all("Oxtr" in lay.features.columns for lay in imputed)
    assert "Gad1" not in imputed[0].features.columns
    # names never collide: napari would have renamed a duplicate "... [1]"
    names = [layer.name for layer in viewer.layers]
    assert len(set(names)) == len(names) and not any(n.endswith("]") for n in names)


def test_recolour_to_unmeasured_removes_measured(widget):
    viewer, model, w = widget
    # the bundled reference holds only panel genes: pretend one was not measured
    model.result.var.loc["Slc17a6", "is_shared"] = False
    model.result.var.loc["Slc17a6", "measured_name"] = ""
    w.show_gene("Gad1")
    assert len(viewer.layers) == 2
    w.show_gene("Slc17a6")
    assert [lay.name for lay in viewer.layers] == ["Slc17a6 imputed"]
    # issue 24 (7): the colour scales follow: one, titled with the new gene
    assert [r["title"].split(" · ")[0] for r in w.scales.shown] == ["Slc17a6"]


def test_add_new_layers_when_recolour_off(widget):
    viewer, model, w = widget
    w.recolor_check.setChecked(False)
    w.measured_check.setChecked(False)
    w.show_gene("Gad1")
    w.show_gene("Slc17a6")
    assert len(viewer.layers) == 2
    w.show_gene("Slc17a6")  # the same gene again: recoloured, not duplicated
    assert len(viewer.layers) == 2


def test_cluster_probability_and_most_likely_cluster(widget):
    viewer, model, w = widget
    cluster = w.cluster_combo.itemText(0)
    layers = w.show_cluster(cluster)
    assert [layer.name for layer in layers] == [f"{cluster} probability"]
    lo, hi = plugin_meta(layers[0])["limits"]
    assert lo == 0.0 and 0 < hi <= 1.0
    assert model.shown.kind == "probability" and model.shown.name == cluster
    pred = w.show_predicted()
    assert [p.name for p in pred] == ["most likely cell_type"]
    assert pred[0].face_color_mode == "cycle"
    assert str(pred[0].features["cell_type"].dtype) == "category"
    shown = model.shown
    assert shown.kind == "predicted" and shown.categories is not None
    rows = plugin_meta(pred[0])["rows"]
    assert np.allclose(shown.rgba[rows], np.asarray(pred[0].face_color), atol=1e-6)
    # a second cluster recolours the probability layer
    other = w.cluster_combo.itemText(1)
    again = w.show_cluster(other)
    assert again[0] is layers[0] and again[0].name == f"{other} probability"
    assert len(viewer.layers) == 2


def test_second_cluster_leaves_one_probability_layer(widget):
    """Issue 24 (6): cluster 0 then cluster 1 gave 7 probability layers at the seed's shape,
    three stale; also with a probability layer selected, or after a new result."""
    viewer, model, w = widget
    for i in (0, 1, 0, 2):
        w.show_cluster(w.cluster_combo.itemText(i))
        probs = [lay for lay in viewer.layers if plugin_meta(lay).get("kind") == "probability"]
        assert [p.name for p in probs] == [f"{w.cluster_combo.itemText(i)} probability"]
    viewer.layers.selection.active = probs[0]
    w.show_cluster(w.cluster_combo.itemText(3))
    assert len(viewer.layers) == 1


def test_unknown_gene_is_notified_not_added(widget, monkeypatch):
    viewer, model, w = widget
    seen = []
    monkeypatch.setattr("napari_spatial_impute.plugin.widgets.layer_ops.show_error", seen.append)
    assert w.show_gene("NotAGene") == []
    assert len(viewer.layers) == 0
    assert seen and "NotAGene" in seen[0] and "\n" not in seen[0]


def _fov_box(model, fov):
    rows = fov_rows(model.result, "fov", "sample")[fov]
    yx = display_yx(model.result, rows, "sample")
    return yx.min(0), yx.max(0)


def test_navigator_puts_the_fov_in_view(widget):
    viewer, model, w = widget
    w.show_gene("Gad1")
    for fov in ("3", "1"):
        assert w.go_to_fov(fov)
        lo, hi = _fov_box(model, fov)
        center = np.asarray(viewer.camera.center[-2:])
        assert np.allclose(center, (lo + hi) / 2, atol=1e-6 + 1e-3 * np.ptp(hi - lo))
        # the whole box fits the canvas at this zoom, and fills most of one side
        canvas = np.asarray(viewer.canvas.size)
        on_screen = (hi - lo) * viewer.camera.zoom
        assert np.all(on_screen <= canvas + 1) and np.any(on_screen >= 0.5 * canvas)
    # the search filters the list; Enter goes to the first match
    w.navigator.search.setText("4")
    shown = [
        w.navigator.fov_list.item(i).text()
        for i in range(w.navigator.fov_list.count())
        if not w.navigator.fov_list.item(i).isHidden()
    ]
    assert shown == ["4"]
    w.navigator.search.returnPressed.emit()
    assert w.navigator.focus == "4"
    # without layers the camera still moves to the FOV's box
    viewer.layers.clear()
    assert w.go_to_fov("1") and np.isfinite(viewer.camera.zoom)


def test_double_click_on_a_fov_goes_there(widget):
    viewer, model, w = widget
    w.show_gene("Gad1")
    lo, hi = _fov_box(model, "2")

    class Click:
        position = tuple((lo + hi) / 2)

    w.navigator._on_double_click(viewer, Click())
    assert w.navigator.focus == "2"
    Click.position = tuple(hi + 1e6)  # outside every FOV: nothing happens
    w.navigator._on_double_click(viewer, Click())
    assert w.navigator.focus == "2"


def test_other_fovs_dimmed_or_hidden_by_one_outline_layer(widget):
    from napari.layers import Shapes

    viewer, model, w = widget
    w.measured_check.setChecked(False)  # one view (the grid stays off)
    w.show_gene("Gad1")
    w.navigator.others.setCurrentText("dimmed")
    w.go_to_fov("2")
    outlines = [lay for lay in viewer.layers if isinstance(lay, Shapes)]
    assert len(outlines) == 1 and viewer.layers[-1].unique_id == outlines[0].unique_id  # on top
    feats = outlines[0].features
    alpha = np.asarray(outlines[0].face_color)[:, 3]
    is_fov = (feats["kind"] == "fov").to_numpy()
    chosen = (feats["name"] == "2").to_numpy()
    assert np.all(alpha[chosen] == 0) and np.all(alpha[is_fov & ~chosen] > 0.5)
    w.navigator.others.setCurrentText("hidden")
    assert np.all(np.asarray(outlines[0].face_color)[is_fov & ~chosen, 3] == 1)
    w.navigator.show_all()
    assert np.all(np.asarray(outlines[0].face_color)[:, 3] == 0) and w.navigator.focus is None
    assert len(viewer.layers) == 2  # the gene layer and the one outline layer


def test_side_by_side_grid_one_cell_per_role(widget):
    viewer, model, w = widget
    w.show_gene("Gad1")
    w.grid_check.setChecked(True)
    assert viewer.grid.enabled and viewer.grid.stride == -1
    top = [plugin_meta(lay)["kind"] for lay in list(viewer.layers)[::-1]]
    assert top[:2] == ["imputed", "measured"]  # cells: imputed, measured
    w.show_gene("Slc17a6")  # recoloured in place, still one cell per role
    assert [plugin_meta(lay)["kind"] for lay in list(viewer.layers)[::-1]][:2] == top[:2]
    w.grid_check.setChecked(False)
    assert not viewer.grid.enabled


def test_side_by_side_fits_the_tissue_not_the_reference(widget):
    """Issue 24 (8): side by side with the reference UMAP loaded, each grid cell fitted the
    UMAP's extent too (napari's grid fits every layer): the tissue at ~1/5 of the canvas."""
    viewer, model, w = widget
    far = np.asarray(model.result.obsm["spatial"])[:, ::-1].max(axis=0) + 20_000
    viewer.add_points(np.array([far, far + 5000.0]), name="reference UMAP beside")
    w.show_gene("Gad1")  # measured beside imputed: the grid comes on
    assert viewer.grid.enabled
    rows, cols = viewer.grid.actual_shape(list(viewer.layers))
    cell = np.asarray(viewer.canvas.size) / np.array([rows, cols])
    yx = display_yx(model.result, None, "sample")
    lo, hi = np.nanmin(yx, axis=0), np.nanmax(yx, axis=0)
    on_screen = (hi - lo) * viewer.camera.zoom
    assert np.all(on_screen <= cell + 1) and np.any(on_screen >= 0.8 * cell)
    assert np.allclose(viewer.camera.center[-2:], (lo + hi) / 2, rtol=1e-3)


def test_side_by_side_gives_the_reference_umap_no_empty_cell(widget):
    """Issue 24 (8): with the reference UMAP loaded, the grid gave it a cell of its own, which
    (the camera fitted to the tissue) showed nothing and took half of the canvas; it is hidden
    while the grid is on and shown again when it goes off."""
    from napari_spatial_impute.viz.layers import REFERENCE_ROLE, make_meta

    viewer, model, w = widget
    umap = viewer.add_points(
        np.array([[0.0, 0.0], [5.0, 5.0]]),
        name="reference UMAP",
        metadata=make_meta(REFERENCE_ROLE),
    )
    w.show_gene("Gad1")  # measured beside imputed: the grid comes on
    assert viewer.grid.enabled
    assert not umap.visible
    assert viewer.grid.actual_shape(list(viewer.layers)) == (1, 2)  # imputed | measured
    w.grid_check.setChecked(False)
    assert umap.visible


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
    # a switch is drawn: the canvas takes the new colours (one setter, its second refresh
    # blocked, must still reach the screen)
    w.show_gene("Slc17a6")
    again = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert np.abs(again - rgb).sum(-1).astype(bool).sum() > 500


def test_large_fovs_build_in_a_worker(widget, qtbot, monkeypatch):
    viewer, model, w = widget
    import threading

    from napari_spatial_impute.viz import explore

    monkeypatch.setattr("napari_spatial_impute.plugin.widgets.explore_widget.ASYNC_CELLS", 10)
    readers = []
    read = explore.values

    def values_seen(*args, **kwargs):
        readers.append(threading.current_thread())
        return read(*args, **kwargs)

    monkeypatch.setattr(explore, "values", values_seen)
    assert w.show_gene("Gad1") == []  # returns at once, the layers come later
    assert not w.gene_button.isEnabled()
    qtbot.waitUntil(lambda: len(viewer.layers) == 2 and w.gene_button.isEnabled(), timeout=20_000)
    assert w.status.text() == "Gad1: imputed, measured"
    # the values were read (and coloured) in the worker, never on the main thread
    assert readers and threading.main_thread() not in readers
    assert model.shown.name == "Gad1"  # told on the main thread once placed
    # an error in the worker is a notification and adds nothing
    seen = []
    monkeypatch.setattr(
        "napari_spatial_impute.plugin.widgets.explore_widget.notify_error", seen.append
    )
    w.show_gene("NotAGene")
    qtbot.waitUntil(lambda: bool(seen) and w.gene_button.isEnabled(), timeout=20_000)
    assert "NotAGene" in str(seen[0])
    assert len(viewer.layers) == 2


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
    new = result_to_anndata(
        map_cells_to_space(model.reference, model.spatial, cluster_key="cell_type", epochs=3)
    )
    model.set_result(new)
    assert len(viewer.layers) == n
    layer = gene_layers[0]
    rows = plugin_meta(layer)["rows"]
    assert np.allclose(layer.features["Gad1"], values(new, "imputed", "Gad1")[rows])
    assert np.allclose(plugin_meta(layer)["limits"], robust_limits(values(new, "imputed", "Gad1")))
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
    assert sst == gad1 and len(viewer.layers) == 2  # imputed + measured
    before = {layer.name: layer.features.copy() for layer in viewer.layers}
    second = first[:, [g for g in first.var_names if g != "Sp9"]].copy()
    path = tmp_path / "second.h5ad"
    second.write_h5ad(path)
    n_notes = len(notification_manager.records)
    opened = viewer.open(str(path), plugin="napari-spatial-impute")
    assert model.result is not first and "Sp9" not in model.result.var_names
    kept = [layer for layer in viewer.layers if layer not in opened]
    assert len(kept) == 2, "the first result's gene layers are still there"
    for layer in kept:
        assert layer.name.endswith(" (previous result)")
        old_name = layer.name.removesuffix(" (previous result)")
        assert layer.features.equals(before[old_name]), "with the first result's values"
        assert plugin_meta(layer)["kind"] == "previous result" and "rows" not in plugin_meta(layer)
        assert plugin_meta(layer)["previous"]["value"] == "Sp9"
    notes = notification_manager.records[n_notes:]
    assert any(
        n.severity == NotificationSeverity.WARNING
        and "2 layers of the previous result kept" in str(n.message)
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
    assert again[0] is layers[0] and len(viewer.layers) == 2
    pred = w.show_predicted()
    pred[0].name = "renamed"
    again = w.show_predicted()
    assert len(viewer.layers) == 3 and "renamed" not in [layer.name for layer in viewer.layers]


def test_fov_outlines_are_one_shapes_layer_with_names(widget):
    """Issue 12: every FOV's and sample's outline and name in one layer; again replaces it."""
    from napari.layers import Shapes

    viewer, model, w = widget
    layer = w.show_fov_outlines()
    assert isinstance(layer, Shapes) and len(viewer.layers) == 1
    fovs = list(fov_rows(model.result, "fov", "sample"))
    kinds = list(layer.features["kind"])
    assert kinds == ["fov"] * 4 + ["sample"] * 2
    assert list(layer.features["name"]) == [*fovs, "A", "B"] and len(layer.data) == 6
    for box, fov in zip(layer.data, fovs, strict=False):
        lo, hi = _fov_box(model, fov)
        # the layer keeps float32 corners: allow their rounding
        assert np.all(lo >= box.min(0) - 1e-3) and np.all(hi <= box.max(0) + 1e-3)
    w.show_fov_outlines()
    assert len(viewer.layers) == 1 and plugin_meta(viewer.layers[0])["kind"] == "fov_outlines"
    w.gene_edit.setText("Gad1")
    assert w.show_gene()  # the other layers still come and go as before


def _overlapping_samples(model):
    """Put sample B on top of sample A, as sections imaged separately share coordinates."""
    res = model.result.copy()
    xy = np.asarray(res.obsm["spatial"], dtype=np.float64).copy()
    b = (res.obs["sample"] == "B").to_numpy()
    xy[b, 0] -= xy[b, 0].min() - xy[~b, 0].min()
    res.obsm["spatial"] = xy
    model.set_result(res)
    return res


def test_samples_sharing_coordinates_are_laid_out_side_by_side(widget):
    viewer, model, w = widget
    res = _overlapping_samples(model)
    layers = w.show_gene("Gad1")
    imputed = next(lay for lay in layers if plugin_meta(lay)["kind"] == "imputed")
    # one layer: the layout is in its coordinates (where display_yx draws each cell)
    rows = plugin_meta(imputed)["rows"]
    assert np.allclose(imputed.data, display_yx(res, rows, "sample"))
    assert np.allclose(imputed.translate, 0)
    sample = imputed.features["sample"].astype(str).to_numpy()
    boxes = {}
    for s in ("A", "B"):
        drawn = np.asarray(imputed.data)[sample == s]
        boxes[s] = (drawn.min(0), drawn.max(0))
        assert np.all(res.obs["sample"].to_numpy()[rows[sample == s]] == s)
    (a_lo, a_hi), (b_lo, b_hi) = boxes["A"], boxes["B"]
    assert a_hi[1] < b_lo[1] or b_hi[1] < a_lo[1] or a_hi[0] < b_lo[0] or b_hi[0] < a_lo[0]
    # the samples are named in the outline layer, added with the first layers
    outlines = [lay for lay in viewer.layers if plugin_meta(lay).get("kind") == "fov_outlines"]
    assert len(outlines) == 1
    assert list(outlines[0].features["name"][outlines[0].features["kind"] == "sample"]) == [
        "A",
        "B",
    ]
    # going to a FOV of sample B looks where B is drawn
    w.go_to_fov("3")
    lo, hi = _fov_box(model, "3")
    assert np.all(lo >= b_lo - 1e-6) and np.all(hi <= b_hi + 1e-6)
    assert np.allclose(viewer.camera.center[-2:], (lo + hi) / 2)


def test_going_to_a_fov_in_the_side_by_side_grid_fits_one_cell(widget):
    viewer, model, w = widget
    w.show_gene("Gad1")
    w.grid_check.setChecked(True)
    assert w.go_to_fov("2")
    lo, hi = _fov_box(model, "2")
    rows, cols = viewer.grid.actual_shape(list(viewer.layers))
    assert rows * cols >= 2
    cell = np.asarray(viewer.canvas.size) / np.array([rows, cols])
    on_screen = (hi - lo) * viewer.camera.zoom
    assert np.all(on_screen <= cell + 1) and np.any(on_screen >= 0.5 * cell)


def test_default_point_size_is_the_spacing_within_a_sample(widget):
    from napari_spatial_impute.viz.coords import point_size

    viewer, model, w = widget
    alone = point_size(model.result[model.result.obs["sample"] == "B"].copy())
    res = _overlapping_samples(model)  # B on top of A: the file's spacing halves
    assert point_size(res) < 0.8 * alone
    layers = w.show_gene("Gad1")
    assert w.size_spin.value() == pytest.approx(float(np.mean(layers[0].size)))
    assert float(np.mean(layers[0].size)) == pytest.approx(alone, rel=0.35)


def test_measured_beside_imputed_and_data_layers_hidden_under_them(widget):
    """Issue 12: measured layers would hide the imputed ones drawn in the same place, and the
    data-set layers under them cost a draw each: the grid comes on for measured genes (off
    again for a gene without), the result's own layers are hidden (not removed)."""
    from napari_spatial_impute.viz.layers import spatial_layers

    viewer, model, w = widget
    for data, kw, _ in spatial_layers(model.result, role="result"):  # as the Map widget adds
        viewer.add_points(data, **kw)
    own = list(viewer.layers)
    w.show_gene("Gad1")
    assert all(not lay.visible for lay in own) and len(viewer.layers) == len(own) + 2
    assert viewer.grid.enabled and w.grid_check.isChecked()
    model.result.var.loc["Slc17a6", "is_shared"] = False  # pretend it was not measured
    model.result.var.loc["Slc17a6", "measured_name"] = ""
    w.show_gene("Slc17a6")
    assert not viewer.grid.enabled and not w.grid_check.isChecked()
    w.grid_check.setChecked(True)  # the user's choice stays
    w.show_gene("Sp9")
    w.show_gene("Slc17a6")
    assert viewer.grid.enabled


def test_no_outline_cell_in_the_side_by_side_grid(widget):
    """Side by side, an outline layer would take a grid cell of its own: going to a FOV with
    the others dimmed adds none there, and one made by the Outlines button waits, hidden, for
    the single view."""
    viewer, model, w = widget
    w.show_gene("Gad1")  # measured beside imputed: the grid is on
    assert viewer.grid.enabled
    w.navigator.others.setCurrentText("dimmed")
    assert w.go_to_fov("3")
    assert w.navigator.outline_layer() is None
    layer = w.show_fov_outlines()
    assert not layer.visible
    rows, cols = viewer.grid.actual_shape(list(viewer.layers))
    assert rows * cols == 2  # imputed | measured, nothing else
    w.grid_check.setChecked(False)
    assert layer.visible and viewer.layers[-1].unique_id == layer.unique_id  # above the cells


def test_whole_section_fits_the_section_not_the_reference_beside(widget):
    """Whole section: the camera fits the section's cells, not another data set's layer beside
    it (napari's reset_view fits every layer, a reference UMAP included)."""
    viewer, model, w = widget
    w.show_gene("Gad1")
    far = np.asarray(w.model.result.obsm["spatial"])[:, ::-1].max(axis=0) + 50_000
    viewer.add_points(np.array([far, far + 1000.0]), name="reference UMAP far away")
    viewer.reset_view()
    zoom_all = viewer.camera.zoom
    w.navigator.show_all()
    yx = display_yx(w.model.result, None, None)
    lo, hi = np.nanmin(yx, axis=0), np.nanmax(yx, axis=0)
    assert np.allclose(viewer.camera.center[-2:], (lo + hi) / 2, atol=1e-6 * np.abs(hi).max() + 1)
    assert viewer.camera.zoom > 10 * zoom_all
