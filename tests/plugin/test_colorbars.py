"""One titled colour bar at a time: the selected layer's (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
from _explore_data import explore_in

from napari_spatial_impute.plugin.widgets.colorbars import _text_overlay, get_colorbar_controller
from napari_spatial_impute.viz.colorbars import colorbar_title, value_units


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


def test_only_the_selected_layers_bar_is_shown_with_its_title(explored):
    viewer, model, w, layers = explored
    ctl = get_colorbar_controller(viewer)
    overlay = _text_overlay(viewer)
    assert len(layers) == 4  # imputed and measured, one layer per sample each
    for layer in layers:
        viewer.layers.selection.active = layer
        assert [lay.name for lay in layers if lay.face_colorbar.visible] == [layer.name]
        assert overlay.visible and overlay.text == ctl.title
        assert overlay.text.startswith("Gad1 · ")
        kind = "imputed" if "imputed" in layer.name else "measured"
        assert f"· {kind} (" in overlay.text
    # a layer without a colour map selected: the last bar and title stay
    other = viewer.add_points(np.zeros((1, 2)), name="mine")
    viewer.layers.selection.active = other
    assert [lay.name for lay in layers if lay.face_colorbar.visible] == [layers[-1].name]
    assert overlay.visible
    # the shown layer removed: no bar, and the plugin's own title is cleared
    for layer in layers:
        viewer.layers.remove(layer)
    assert not overlay.visible and overlay.text == ""


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
