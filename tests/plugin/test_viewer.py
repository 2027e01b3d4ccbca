"""viewer.open_result_in_napari: result layers, reference UMAP, docked plugin widgets."""

from __future__ import annotations

import napari
import numpy as np

from napari_spatial_impute import map_cells_to_space
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.plugin.sync import viewer_model
from napari_spatial_impute.plugin.viewer import DOCKED, open_result_in_napari
from napari_spatial_impute.viz.layers import plugin_meta


def test_open_result_docks_widgets(make_napari_viewer, monkeypatch, tmp_path, merfish):
    ref, spa = merfish
    x = spa.obsm["spatial"][:, 0]
    q = np.quantile(x, [0.25, 0.5, 0.75])
    spa.obs["fov"] = np.array(["1", "2", "3", "4"])[np.searchsorted(q, x)]
    spa.obs["sample"] = np.where(x < q[1], "A", "B")  # two sections of two FOVs, apart in space
    res = result_to_anndata(map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=10))
    path = tmp_path / "result.h5ad"
    res.write_h5ad(path)
    viewer = make_napari_viewer()
    monkeypatch.setattr(napari, "Viewer", lambda **_: viewer)
    ref.obsm["X_umap"] = np.random.default_rng(0).normal(size=(ref.n_obs, 2)).astype(np.float32)
    out = open_result_in_napari(path, reference=ref, run=False)
    assert out is viewer
    # one result layer for both samples, then the reference
    assert [layer.name for layer in viewer.layers] == ["most likely cell_type", "reference UMAP"]
    layer = viewer.layers[0]
    md = plugin_meta(layer)
    assert np.array_equal(np.sort(md["rows"]), np.arange(res.n_obs)) and md["sample"] == ""
    for column in ("fov", "sample"):  # features, not layers
        shown = layer.features[column].astype(str).to_numpy()
        np.testing.assert_array_equal(shown, spa.obs[column].to_numpy()[md["rows"]])
    model = viewer_model(viewer)
    assert model.result is not None and model.result.n_vars == 134
    assert model.reference is ref and model.cluster_key == "cell_type"
    docked = set(viewer.window.dock_widgets)
    for name in DOCKED:
        assert any(name in title for title in docked), (name, docked)


def test_open_sample_fills_the_model(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    viewer.open_sample("napari-spatial-impute", "merfish_mapping")
    # no samples: one layer with every cell, never a layer per FOV
    assert [layer.name for layer in viewer.layers] == ["most likely cell_type"]
    model = viewer_model(viewer)
    assert model.result is not None and model.result.n_vars == 134
    assert len(viewer.layers[0].data) == model.result.n_obs
    assert plugin_meta(viewer.layers[0])["sample"] == ""
    assert model.cluster_key == "cell_type"


def test_dropped_result_file_opens_with_plugin(make_napari_viewer_proxy, tmp_path, merfish):
    ref, spa = merfish
    res = result_to_anndata(map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=5))
    path = tmp_path / "r.h5ad"
    res.write_h5ad(path)
    viewer = make_napari_viewer_proxy()
    layers = viewer.open(str(path), plugin="napari-spatial-impute")
    assert len(layers) == 1 and viewer_model(viewer).result is not None
    out = tmp_path / "saved.h5ad"
    viewer.layers.save(str(out), plugin="napari-spatial-impute")
    import anndata as ad

    back = ad.read_h5ad(out)
    np.testing.assert_array_equal(back.X, res.X)


def test_docked_widgets_share_one_model(make_napari_viewer, qtbot, merfish):
    """napari gives each dock widget its own viewer proxy; they must still share one model."""
    import gc

    viewer = make_napari_viewer()
    _, load = viewer.window.add_plugin_dock_widget("napari-spatial-impute", "Load data")
    gc.collect()
    _, mapw = viewer.window.add_plugin_dock_widget("napari-spatial-impute", "Map cells to space")
    assert not mapw.run_button.isEnabled()
    ref, spa = merfish
    load._on_loaded((ref, spa, False, False))
    assert mapw.run_button.isEnabled(), "the Map widget sees what the Load widget loaded"
    text = mapw.data_label.text()
    assert "1,308 reference" in text and "750 spatial cells" in text


#: The widest a dock of ours may ask to be (px): the canvas keeps most of a 1920 px screen.
DOCK_MAX = 450


def _widths(dock):
    return dock.minimumSizeHint().width(), dock.sizeHint().width()


def test_docks_keep_a_reasonable_width(make_napari_viewer, qtbot):
    """Issue 24 (9): Diagnostics, Label images or Map's advanced settings pushed the window to
    1,262-1,451 px (long unwrapped labels, a row of spin boxes and buttons, figure canvases
    asking for their figure's size). Each dock asks for at most DOCK_MAX px, with every part
    unfolded and every tab shown, over a result."""
    from _explore_data import load_into
    from qtpy.QtWidgets import QApplication

    from napari_spatial_impute.plugin.widgets.diagnostics_widget import DiagnosticsWidget
    from napari_spatial_impute.plugin.widgets.image_widget import ImageWidget
    from napari_spatial_impute.plugin.widgets.map_widget import MapWidget

    viewer = make_napari_viewer(show=True)
    load_into(viewer)
    docks = {}
    for cls in (MapWidget, DiagnosticsWidget, ImageWidget):
        widget = cls(viewer)
        docks[cls.__name__] = (widget, viewer.window.add_dock_widget(widget, name=cls.__name__))
    mapw = docks["MapWidget"][0]
    mapw.advanced_button.setChecked(True)
    mapw.batches_button.setChecked(True)
    diag = docks["DiagnosticsWidget"][0]
    seen = {}
    for i in range(diag.tabs.count()):
        diag.tabs.setCurrentIndex(i)
        QApplication.processEvents()
        for name, (_, dock) in docks.items():
            seen[f"{name} ({diag.tabs.tabText(i)} tab)"] = _widths(dock)
    wide = {k: v for k, v in seen.items() if max(v) > DOCK_MAX}
    assert not wide, f"(minimum, preferred) widths over {DOCK_MAX} px: {wide}"
    # the Diagnostics pages lay their parts out for the width they get (no cut-off text)
    assert diag.cv_info.wordWrap() and diag.markers_info.wordWrap()
