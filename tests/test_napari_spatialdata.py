"""A results table written into a SpatialData store opens in napari-spatialdata and colours cells.

Everything here goes through napari-spatialdata's own entry points: its npe2 reader (``viewer.open``
with ``plugin="napari-spatialdata"``, which docks its "SpatialData" widget and its "View" widget),
the element list of the "SpatialData" widget (double-click ``fov0_labels`` in ``global``) and the
"View" widget (choose the table, double-click a var name or an obs column), as a user would.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_rgba

from _data import make_store

pytest.importorskip("napari_spatialdata")

from napari_spatialdata import QtAdataViewWidget
from qtpy.QtCore import Qt

import napari_spatial_impute as nsi
from napari_spatial_impute.core.export import write_result_to_store
from napari_spatial_impute.io.sdata import read_spatial

GENE = "Gene3"
LABELS = "fov0_labels"


@pytest.fixture
def store(tmp_path):
    """A CosMx-like store holding its own table ``table`` and our result table ``spatial_impute``."""
    path, ref = make_store(tmp_path / "cells.zarr")
    result = nsi.map_cells_to_space(ref, read_spatial(path), cluster_key="cell_type")
    write_result_to_store(result, path)
    return path


def _find_item(widget, text):
    items = widget.findItems(text, Qt.MatchExactly)
    assert len(items) == 1, f"{text!r} is not offered once in {type(widget).__name__}"
    return items[0]


def _double_click(widget, text):
    """What a double-click on the row ``text`` of a list widget does."""
    item = _find_item(widget, text)
    widget.setCurrentItem(item)
    widget.itemDoubleClicked.emit(item)


@pytest.mark.filterwarnings("ignore:zarr v3 autosharding:UserWarning")
def test_result_table_colours_labels_in_napari_spatialdata(make_napari_viewer, qtbot, store):
    ours = ad.read_zarr(store / "tables" / "spatial_impute")
    viewer = make_napari_viewer()

    # 1. napari-spatialdata's reader: no layers, but its widgets docked with the store in them.
    assert viewer.open(str(store), plugin="napari-spatialdata") == []
    docks = viewer.window.dock_widgets
    sdata_widget = docks["SpatialData"]
    (view,) = (w for w in docks.values() if isinstance(w, QtAdataViewWidget))
    (sdata,) = sdata_widget.viewer_model.sdata
    assert set(sdata.tables) == {"table", "spatial_impute"}
    assert sdata.tables["spatial_impute"].shape == ours.shape

    # 2. Choose "global", double-click the labels of FOV 0; the layer comes from a worker thread.
    _double_click(sdata_widget.coordinate_system_widget, "global")
    _double_click(sdata_widget.elements_widget, LABELS)
    qtbot.waitUntil(lambda: LABELS in viewer.layers, timeout=10_000)
    qtbot.waitUntil(lambda: not sdata_widget.worker_thread.isRunning(), timeout=10_000)
    layer = viewer.layers[LABELS]
    assert set(layer.metadata["table_names"]) == {"table", "spatial_impute"}

    # ... select it, pick a table in the View widget: the store's own one offers its (lower-case)
    # measured genes, ours the imputed ones; then double-click the gene.
    viewer.layers.selection.active = layer
    view.table_name_widget.setCurrentText("table")
    assert view.model.active_table_name == "table"
    assert not view.var_widget.findItems(GENE, Qt.MatchExactly)
    view.table_name_widget.setCurrentText("spatial_impute")
    assert view.model.active_table_name == "spatial_impute"
    _double_click(view.var_widget, GENE)
    assert view.model.color_by == GENE

    # The values it colours by are our X for the instance ids of FOV 0.
    fov0 = ours[ours.obs["fov_labels"] == LABELS]
    expected = dict(zip(fov0.obs["cell_ID"], fov0.obs_vector(GENE), strict=True))
    used = layer.features.set_index("index")[GENE]
    assert sorted(used.index) == sorted(expected) == list(range(1, 25))
    np.testing.assert_allclose(used.loc[list(expected)], list(expected.values()), rtol=1e-6)

    # The colours follow the values along its colour map (viridis): higher value, later colour.
    lut = colormaps[view.model.cmap](np.linspace(0, 1, 256))
    pos = {}
    for cell in expected:
        colour = np.asarray(layer.get_color(cell))
        pos[cell] = np.abs(lut - colour).sum(axis=1).argmin()
        assert np.abs(lut[pos[cell]] - colour).max() < 0.01, "not a colour of the colour map"
    order = sorted(expected, key=expected.get)
    lo, hi = order[0], order[-1]
    assert expected[hi] > expected[lo]
    assert not np.allclose(layer.get_color(lo), layer.get_color(hi))
    assert [pos[c] for c in order] == sorted(pos[c] for c in order)

    # 3. Colour by the predicted type: the colours are our uns["cell_type_predicted_colors"].
    _double_click(view.obs_widget, "cell_type_predicted")
    assert view.model.color_by == "cell_type_predicted"
    types = fov0.obs["cell_type_predicted"]
    palette = dict(zip(types.cat.categories, ours.uns["cell_type_predicted_colors"], strict=True))
    assert types.nunique() > 1
    for cell, kind in zip(fov0.obs["cell_ID"], types, strict=True):
        np.testing.assert_allclose(layer.get_color(cell), to_rgba(palette[kind]), atol=1e-6)
