"""Titled colour bars: napari's for colormap layers (issue 12), the Explore widget's own
scales for its directly coloured layers (issue 24)."""

from __future__ import annotations

import numpy as np
import pytest
from _explore_data import explore_in

from napari_spatial_impute.plugin.widgets.colorbars import _text_overlay, get_colorbar_controller
from napari_spatial_impute.viz.colorbars import colorbar_title, value_units
from napari_spatial_impute.viz.layers import plugin_meta


def test_titles_name_the_value_the_kind_and_the_units():
    raw = {"transform": "none", "reference_values": "raw counts", "spatial_values": "raw counts"}
    assert colorbar_title({"kind": "imputed", "value": "Gad1"}, raw) == (
        "Gad1 · imputed (reference counts)"
    )
    assert colorbar_title({"kind": "measured", "value": "Gad1"}, raw) == "Gad1 · measured (counts)"
    log = {"transform": "normalize_log1p"}
    assert "log1p of normalised" in colorbar_title({"kind": "imputed", "value": "Sst"}, log)
    assert colorbar_title({"kind": "probability", "value": "Astro"}) == (
        "Astro · probability (0-1)"
    )
    interval = colorbar_title({"kind": "interval", "value": "Gad1", "level": "67"}, raw)
    assert interval == "Gad1 · 67% interval width (reference counts)"
    assert colorbar_title({"kind": "predicted", "value": "cell_type"}) == ""
    assert colorbar_title({}) == ""
    assert value_units({}) == ("reference values as given", "values as given")
    # transform auto: the raw-count set normalised and log1p'd, the processed one as given
    auto = {
        "transform": "auto",
        "reference_values": "log-transformed",
        "spatial_values": "raw counts",
    }
    assert value_units(auto) == ("reference values as given", "log1p of normalised counts")


@pytest.fixture
def explored(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    model, w = explore_in(viewer, qtbot)
    w.gene_edit.setText("Gad1")
    return viewer, model, w, w.show_gene()


def test_one_titled_bar_per_shown_role_following_each_switch(explored):
    """Issue 24 (7): titles stayed on the previous gene or cluster, several untitled bars at
    once, the title over the bar, none after an unmeasured gene. The layers are coloured
    directly; the Explore widget's colour scales title one bar per shown role, rebuilt at every
    switch, each title on its own row above its bar."""
    viewer, model, w, layers = explored
    assert len(layers) == 2  # imputed and measured, both samples in each
    # napari's own bars (untitled, needing the colormap path) are not drawn, nor its overlay
    assert not any(lay.face_colorbar.visible for lay in layers)
    assert not _text_overlay(viewer).visible
    rows = w.scales.shown
    assert [r["title"].split(" (")[0] for r in rows] == ["Gad1 · imputed", "Gad1 · measured"]
    for r, layer in zip(rows, sorted(layers, key=lambda lay: lay.name), strict=True):
        assert np.allclose(r["limits"], plugin_meta(layer)["limits"])
    w.show_gene("Slc17a6")
    assert [r["title"].split(" (")[0] for r in w.scales.shown] == [
        "Slc17a6 · imputed",
        "Slc17a6 · measured",
    ]
    cluster = w.cluster_combo.itemText(0)
    w.show_cluster(cluster)
    w.show_cluster(w.cluster_combo.itemText(1))
    titles = [r["title"] for r in w.scales.shown]
    assert f"{w.cluster_combo.itemText(1)} · probability (0-1)" in titles
    assert not any(t.startswith(f"{cluster} ·") for t in titles)
    # a gene that was not measured: the imputed bar stays, titled with it
    model.result.var.loc["Sp9", "is_shared"] = False
    model.result.var.loc["Sp9", "measured_name"] = ""
    w.show_gene("Sp9")
    assert [r["title"].split(" (")[0] for r in w.scales.shown] == [
        "Sp9 · imputed",
        f"{w.cluster_combo.itemText(1)} · probability",
    ]
    # each title sits on its own grid row, above its bar (never over it)
    grid = w.scales._grid
    for i in range(len(w.scales.shown)):
        title = grid.itemAtPosition(2 * i, 0).widget()
        bar = grid.itemAtPosition(2 * i + 1, 1).widget()
        assert title.text() == w.scales.shown[i]["title"] and not bar.pixmap().isNull()
    # the layers gone: no bar left
    viewer.layers.clear()
    assert w.scales.shown == [] and w.scales.isHidden()


def test_someone_elses_overlay_text_is_left_alone(make_napari_viewer_proxy, qtbot):
    """Without a titled plugin layer the controller never touches napari's text overlay."""
    viewer = make_napari_viewer_proxy()
    explore_in(viewer, qtbot)  # its widget wires the controller
    overlay = _text_overlay(viewer)
    overlay.text = "my note"
    overlay.visible = True
    a = viewer.add_points(np.zeros((1, 2)), name="a")
    viewer.add_points(np.ones((1, 2)), name="b")
    viewer.layers.selection.active = a
    viewer.layers.remove(a)
    assert overlay.text == "my note" and overlay.visible


def test_a_colormap_layer_keeps_napari_s_titled_bar(explored):
    """A plugin layer coloured through napari's colormap path (not the Explore widget's) still
    gets napari's bar, one at a time, and the title."""
    import pandas as pd

    from napari_spatial_impute.viz.layers import make_meta

    viewer, model, w, layers = explored
    ctl = get_colorbar_controller(viewer)
    made = [
        viewer.add_points(
            np.random.default_rng(0).random((5, 2)),
            features=pd.DataFrame({"v": np.arange(5.0)}),
            face_color="v",
            face_colormap="viridis",
            metadata=make_meta("imputed", value=gene),
            name=f"mine {gene}",
        )
        for gene in ("Sst", "Oxtr")
    ]
    for layer in made:
        viewer.layers.selection.active = layer
        assert [lay.name for lay in made if lay.face_colorbar.visible] == [layer.name]
        assert _text_overlay(viewer).text == ctl.title
        assert ctl.title.startswith(plugin_meta(layer)["value"] + " · imputed")
    assert not any(lay.face_colorbar.visible for lay in layers)


def test_a_layer_drawn_as_masks_keeps_its_scale(explored):
    """A gene's points hidden because its cells are drawn in their masks (zoomed in over a
    store) are still what is shown: the dock's scale stayed empty (seen in the store
    screenshots); a layer the user hid has none."""
    from napari_spatial_impute.plugin.widgets.color_scales import scale_rows
    from napari_spatial_impute.viz.cell_shapes import HIDDEN_FOR_MASKS
    from napari_spatial_impute.viz.layers import plugin_meta, set_meta

    viewer = explored[0]
    (imputed,) = [lay for lay in viewer.layers if plugin_meta(lay).get("kind") == "imputed"]
    shown = [r["kind"] for r in scale_rows(viewer)]
    assert "imputed" in shown
    set_meta(imputed, **{HIDDEN_FOR_MASKS: True})
    imputed.visible = False
    assert [r["kind"] for r in scale_rows(viewer)] == shown
    set_meta(imputed, **{HIDDEN_FOR_MASKS: None})
    assert "imputed" not in [r["kind"] for r in scale_rows(viewer)]
