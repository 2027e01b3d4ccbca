"""The docked legend: categories of the selected layer, counts, toggles (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
from _explore_data import explore_in

from napari_spatial_impute.plugin.widgets.legend_widget import HIDDEN_KEY, LegendWidget
from napari_spatial_impute.viz.layers import plugin_meta


@pytest.fixture
def legend(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    model, explore = explore_in(viewer, qtbot)
    layers = explore.show_predicted()
    w = LegendWidget(viewer)
    qtbot.addWidget(w)
    viewer.layers.selection.active = layers[0]
    return viewer, model, w, layers


def test_lists_each_category_with_its_count_and_colour(legend):
    viewer, model, w, layers = legend
    assert w.layer is not None and w.column == "cell_type"
    assert len(w.layers) == len(layers) == 1  # one layer holds both samples
    assert [lay.name for lay in w.layers] == ["most likely cell_type"]
    values = np.concatenate([np.asarray(lay.features["cell_type"].astype(str)) for lay in layers])
    # the layer holds every cell of the result once
    assert sorted(values) == sorted(model.result.obs["cell_type_predicted"].astype(str))
    cats, counts = np.unique(values, return_counts=True)
    assert sorted(w.categories()) == sorted(cats)
    # most frequent first, each row "name  (count)"
    listed = [w.list.item(i).text() for i in range(w.list.count())]
    assert listed[0].startswith(cats[np.argmax(counts)])
    for cat, n in zip(cats, counts, strict=True):
        assert f"{cat}  ({n:,})" in listed
    assert len(viewer.layers) == len(layers)  # never a layer per category


def test_unticking_hides_exactly_that_category(legend):
    viewer, model, w, layers = legend
    layer = layers[0]
    target = w.categories()[0]
    w.set_visible(target, False)
    for lay in layers:  # in every sample's layer
        values = np.asarray(lay.features["cell_type"].astype(str))
        np.testing.assert_array_equal(lay.shown, values != target)
        assert plugin_meta(lay)[HIDDEN_KEY] == [target]
    w.set_visible(target, True)
    assert all(lay.shown.all() for lay in layers)
    w.set_all(False)
    assert not any(lay.shown.any() for lay in layers)
    # another layer selected and back: what was hidden is remembered
    other = viewer.add_points(np.zeros((1, 2)), name="other")
    viewer.layers.selection.active = other
    assert w.layer is None
    viewer.layers.selection.active = layer
    assert sorted(w.hidden()) == sorted(w.categories())
    w.set_all(True)
    assert all(lay.shown.all() for lay in layers)


def test_a_continuous_layer_has_no_legend(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    _, explore = explore_in(viewer, qtbot)
    explore.gene_edit.setText("Gad1")
    layers = explore.show_gene()
    w = LegendWidget(viewer)
    qtbot.addWidget(w)
    viewer.layers.selection.active = layers[0]
    assert w.layer is None and w.list.count() == 0 and not w.hide_all.isEnabled()
    assert "categories" in w.title.text()


def test_the_toggle_hides_that_category_on_screen(make_napari_viewer, qtbot):
    """Pixels of the drawn canvas: the unticked category's colour is gone, the others stay."""
    viewer = make_napari_viewer(show=True)
    _, explore = explore_in(viewer, qtbot)
    layers = explore.show_predicted()
    w = LegendWidget(viewer)
    qtbot.addWidget(w)
    viewer.layers.selection.active = layers[0]
    viewer.reset_view()
    rows = {cat: rgba for cat, rgba in zip(w.categories(), _colours(w), strict=True)}
    target, other = w.categories()[0], w.categories()[1]

    def pixels(rgba):
        img = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
        return int((np.abs(img - np.round(np.asarray(rgba[:3]) * 255)).sum(-1) < 12).sum())

    assert pixels(rows[target]) > 0 and pixels(rows[other]) > 0
    w.set_visible(target, False)
    assert pixels(rows[target]) == 0
    assert pixels(rows[other]) > 0
    w.set_visible(target, True)
    assert pixels(rows[target]) > 0


def _colours(w):
    from napari_spatial_impute.plugin.widgets.legend_widget import legend_rows

    rows = legend_rows(w.layers, w.column).set_index("category")
    return [rows.loc[c, "color"] for c in w.categories()]
