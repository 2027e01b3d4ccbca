"""SpatialData stores in the viewer: File > Open, the Load widget's store choice, writing back."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from _data import make_store, tree_digest
from napari_spatial_impute.plugin.sync import viewer_model
from napari_spatial_impute.plugin.widgets.load_widget import LoadWidget
from napari_spatial_impute.viz.layers import plugin_meta

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def cosmx_store(shared_data, tmp_path_factory):
    from napari_spatial_impute.io.demo_stores import build_cosmx_lung_store

    return build_cosmx_lung_store(shared_data, tmp_path_factory.mktemp("cosmx") / "lung.zarr")


def _by_type(viewer, kind):
    return [layer for layer in viewer.layers if type(layer).__name__ == kind]


def _on_own_label(labels_layer, points_layer, shift=(0.0, 0.0)):
    """Share of cells whose drawn position reads their own id from the drawn label image."""
    ids = plugin_meta(points_layer)["adata"].obs["cell_ID"].to_numpy()
    world = np.asarray(points_layer.data) + np.asarray(shift)
    got = [labels_layer.get_value(tuple(p), world=True) for p in world]
    return float(np.mean(np.asarray(got, dtype=float) == ids))


def test_file_open_shows_cells_over_the_composite_in_place(
    cosmx_store, make_napari_viewer_proxy, qtbot
):
    """File > Open of the real CosMx store: RGB composite and labels under the cells, aligned."""
    viewer = make_napari_viewer_proxy()
    viewer.open(str(cosmx_store), plugin="napari-spatial-impute")
    (image,), (labels,), (cells,) = (_by_type(viewer, k) for k in ("Image", "Labels", "Points"))
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels", "Points"]
    assert image.rgb and len(cells.data) == 120 and labels.contour == 1  # outlined
    assert _on_own_label(labels, cells) >= 0.95  # the pixel test, through napari's transforms
    assert _on_own_label(labels, cells, shift=(0, 40)) < 0.5  # it can fail
    # the composite is on the labels' pixel grid: a cell's position is the same pixel in both
    for p in np.asarray(cells.data)[:20]:
        np.testing.assert_allclose(
            np.round(image.world_to_data(p))[:2], np.round(labels.world_to_data(p)), atol=1
        )
    assert viewer_model(viewer).spatial is plugin_meta(cells)["adata"]


def test_file_open_of_a_store_without_tables_is_one_notification(
    tmp_path, make_napari_viewer_proxy, monkeypatch
):
    from napari_spatial_impute.plugin import reader

    bare, _ = make_store(tmp_path / "bare.zarr", with_table=False)
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    assert reader.napari_get_reader(str(bare)) is reader.read_store_layers
    assert reader.read_store_layers(str(bare)) == [(None,)]
    assert len(shown) == 1 and "has no tables" in shown[0]


def test_load_widget_store_choice_is_remembered(
    tmp_path, make_napari_viewer_proxy, qtbot, monkeypatch
):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path, _ = make_store(tmp_path / "cells.zarr")
    viewer = make_napari_viewer_proxy()
    w = LoadWidget(viewer)
    qtbot.addWidget(w)
    w.spatial_row.path.setText(str(path))
    qtbot.waitUntil(lambda: w.store_picker.info is not None, timeout=60_000)
    picker = w.store_picker
    assert [picker.table_combo.itemText(i) for i in range(picker.table_combo.count())] == ["table"]
    systems = [picker.cs_combo.itemText(i) for i in range(picker.cs_combo.count())]
    assert systems == ["fov0", "fov1", "global"] and picker.cs_combo.currentText() == "global"
    picker.cs_combo.setCurrentText("fov1")
    w.load()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    spatial = viewer_model(viewer).spatial
    assert spatial.n_obs == 24 and set(spatial.obs["fov_labels"]) == {"fov1_labels"}
    kinds = [type(layer).__name__ for layer in viewer.layers]
    assert kinds[:2] == ["Image", "Labels"] and "Points" in kinds  # rasters under the cells
    assert all(
        plugin_meta(layer)["elements"] == ["fov1_image"] for layer in _by_type(viewer, "Image")
    )
    # loading again replaces the rasters, and a new widget recalls the choice for this store
    w.load()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    assert len(_by_type(viewer, "Image")) == 1 and len(_by_type(viewer, "Labels")) == 1
    w2 = LoadWidget(make_napari_viewer_proxy())
    qtbot.addWidget(w2)
    w2.spatial_row.path.setText(str(path))
    qtbot.waitUntil(lambda: w2.store_picker.info is not None, timeout=60_000)
    assert w2.store_picker.choice() == ("table", "fov1")


def test_map_widget_writes_results_back(tmp_path, make_napari_viewer_proxy, qtbot, monkeypatch):
    import spatialdata as sd

    import napari_spatial_impute as nsi
    from napari_spatial_impute.core.export import result_to_anndata
    from napari_spatial_impute.io.sdata import read_spatial
    from napari_spatial_impute.plugin.widgets.map_widget import MapWidget

    path, ref = make_store(tmp_path / "cells.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = nsi.map_cells_to_space(ref, read_spatial(path), cluster_key="cell_type")
    viewer = make_napari_viewer_proxy()
    w = MapWidget(viewer)
    qtbot.addWidget(w)
    writer = w.store_writer
    assert writer.isHidden()
    viewer_model(viewer).set_result(result_to_anndata(result))
    assert not writer.isHidden()
    errors = []
    monkeypatch.setattr(
        "napari_spatial_impute.plugin.widgets.store_writer.show_error", errors.append
    )
    writer.write()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    assert "spatial_impute" in sd.read_zarr(path).tables and not errors
    before = tree_digest(path)
    writer.write()
    qtbot.waitUntil(
        lambda: not w.busy, timeout=120_000
    )  # exists: refused, one notification, nothing written
    assert len(errors) == 1 and "replace it (Replace" in errors[0]
    assert tree_digest(path) == before
    writer.replace_box.setChecked(True)
    writer.write()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    assert len(errors) == 1


def test_measured_over_a_store_image_keeps_the_cells_over_the_image(
    tmp_path, make_napari_viewer_proxy, qtbot
):
    """Measured beside imputed over a store's image: napari's grid would put the image, the
    coloured masks and each role in cells of their own, parting the cells from the tissue (issue
    24: cells coloured over the image). The grid stays off and the measured layer is added
    hidden, the status saying why; ticking side by side gives the grid (the image a cell of its
    own, the labels' outlines hidden while it is on, back when it goes off)."""
    import napari_spatial_impute as nsi
    from napari_spatial_impute.core.export import result_to_anndata
    from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget

    path, ref = make_store(tmp_path / "cells.zarr")
    viewer = make_napari_viewer_proxy()
    load, explore = LoadWidget(viewer), ExploreWidget(viewer)
    qtbot.addWidget(load)
    qtbot.addWidget(explore)
    load.spatial_row.path.setText(str(path))
    qtbot.waitUntil(lambda: load.store_picker.info is not None, timeout=60_000)
    load.load()
    qtbot.waitUntil(lambda: not load.busy, timeout=120_000)
    (image,), (labels,) = _by_type(viewer, "Image"), _by_type(viewer, "Labels")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = nsi.map_cells_to_space(ref, viewer_model(viewer).spatial, cluster_key="cell_type")
    viewer_model(viewer).set_result(result_to_anndata(result))
    explore.show_gene("Gene3")  # a measured gene
    qtbot.waitUntil(lambda: not explore.busy, timeout=60_000)
    assert not viewer.grid.enabled and image.visible
    by_kind = {plugin_meta(lay).get("kind"): lay for lay in viewer.layers}
    assert by_kind["imputed"].visible and not by_kind["measured"].visible
    assert "measured layer hidden" in explore.status.text()
    explore.grid_check.setChecked(True)  # the user asks for the grid
    assert viewer.grid.enabled
    assert image.visible and not labels.visible
    explore.grid_check.setChecked(False)
    assert not viewer.grid.enabled and labels.visible


def test_folding_the_files_gives_the_height_back(make_napari_viewer_proxy, qtbot):
    """Qt keeps a dock's minimum height from its tallest content; folding must release it so the
    three docks still fit a 1080p window after a store's choices were shown."""
    viewer = make_napari_viewer_proxy()
    w = LoadWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Load data", area="right")
    w.store_picker.setVisible(True)  # a store's table and coordinate choices
    qtbot.waitUntil(lambda: dock.minimumSizeHint().height() >= w.minimumSizeHint().height())
    unfolded = dock.minimumSizeHint().height()
    w.files_button.setChecked(False)
    w.layout().activate()  # the viewer's window is not shown here: lay out now
    qtbot.waitUntil(lambda: dock.minimumSizeHint().height() < unfolded - 100, timeout=5_000)


def test_load_widget_bad_store_is_one_notification(
    tmp_path, make_napari_viewer_proxy, qtbot, monkeypatch
):
    bare, _ = make_store(tmp_path / "bare.zarr", with_table=False)
    shown = []
    monkeypatch.setattr("napari_spatial_impute.plugin.widgets.load_widget.show_error", shown.append)
    viewer = make_napari_viewer_proxy()
    w = LoadWidget(viewer)
    qtbot.addWidget(w)
    w.spatial_row.path.setText(str(bare))
    qtbot.waitUntil(lambda: "Error" in w.store_picker.note.text(), timeout=60_000)
    assert "has no tables" in w.store_picker.note.text()
    w.load()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert len(shown) == 1 and "has no tables" in shown[0] and "\n" not in shown[0]
    assert len(viewer.layers) == 0 and viewer_model(viewer).spatial is None


def test_opened_results_table_has_its_measured_values(tmp_path, make_napari_viewer_proxy, qtbot):
    """Issue 24 (4): a store's results table opened by File > Open had no ``obsm['measured']``
    (the table leaves the measured values in the store's cell table), so Explore's "measured
    beside imputed" refused a gene the info line counted as measured."""
    import napari_spatial_impute as nsi
    from napari_spatial_impute.core.export import result_to_anndata, write_result_to_store
    from napari_spatial_impute.io.sdata import read_spatial
    from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget
    from napari_spatial_impute.viz.layers import source_adata

    path, ref = make_store(tmp_path / "cells.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = nsi.map_cells_to_space(ref, read_spatial(path), cluster_key="cell_type")
        write_result_to_store(result, path)
    expected = result_to_anndata(result).obsm["measured"]
    viewer = make_napari_viewer_proxy()
    viewer.open(str(path), plugin="napari-spatial-impute")
    opened = [a for a in map(source_adata, viewer.layers) if a is not None]
    assert opened and "spatial_impute" in opened[0].uns, "the results table is shown"
    measured = opened[0].obsm["measured"]
    assert list(measured.columns) == list(expected.columns)
    np.testing.assert_array_equal(measured.to_numpy(), expected.loc[opened[0].obs_names].to_numpy())
    w = ExploreWidget(viewer)
    qtbot.addWidget(w)
    gene = str(opened[0].var_names[opened[0].var["is_shared"].to_numpy(dtype=bool)][0])
    w.measured_check.setChecked(True)
    w.show_gene(gene)
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    kinds = [plugin_meta(lay).get("kind") for lay in viewer.layers]
    assert "measured" in kinds and "imputed" in kinds
