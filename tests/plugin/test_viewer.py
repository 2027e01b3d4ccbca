"""viewer.open_result_in_napari: result layers, reference UMAP, docked plugin widgets."""

from __future__ import annotations

import napari
import numpy as np

from napari_spatial_impute import map_cells_to_space
from napari_spatial_impute.plugin.sync import viewer_model
from napari_spatial_impute.plugin.viewer import DOCKED, open_result_in_napari


def test_open_result_docks_widgets(make_napari_viewer, monkeypatch, tmp_path, merfish):
    ref, spa = merfish
    res = map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=10).to_anndata()
    path = tmp_path / "result.h5ad"
    res.write_h5ad(path)
    viewer = make_napari_viewer()
    monkeypatch.setattr(napari, "Viewer", lambda **_: viewer)
    ref.obsm["X_umap"] = np.random.default_rng(0).normal(size=(ref.n_obs, 2)).astype(np.float32)
    out = open_result_in_napari(path, reference=ref, run=False)
    assert out is viewer
    assert [layer.name for layer in viewer.layers] == [
        "most likely cell_type · FOV 0",
        "reference UMAP",
    ]
    model = viewer_model(viewer)
    assert model.result is not None and model.result.n_vars == 134
    assert model.reference is ref and model.cluster_key == "cell_type"
    docked = set(viewer.window.dock_widgets)
    for name in DOCKED:
        assert any(name in title for title in docked), (name, docked)


def test_open_sample_fills_the_model(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    viewer.open_sample("napari-spatial-impute", "merfish_mapping")
    assert [layer.name for layer in viewer.layers] == ["most likely cell_type · FOV 0"]
    model = viewer_model(viewer)
    assert model.result is not None and model.result.n_vars == 134
    assert model.cluster_key == "cell_type"


def test_dropped_result_file_opens_with_plugin(make_napari_viewer_proxy, tmp_path, merfish):
    ref, spa = merfish
    res = map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=5).to_anndata()
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
    assert "1,308 reference cells -> 750 spatial cells" in mapw.data_label.text()
