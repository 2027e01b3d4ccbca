"""Issue 10: NaN coordinates give one clear line (what, which cells, the fix), never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_spatial_impute import InputError
from napari_spatial_impute.plugin.sync import viewer_model


def _new_errors(n_before):
    return [
        str(n.message)
        for n in notification_manager.records[n_before:]
        if n.severity == NotificationSeverity.ERROR
    ]


def _with_nan(adata, key="spatial", rows=(3, 10)):
    adata.obsm[key] = np.asarray(adata.obsm[key], dtype=np.float64).copy()
    adata.obsm[key][list(rows), 0] = np.nan
    return adata


def test_layer_builders_name_the_cells_and_the_fix(merfish):
    from napari_spatial_impute.viz.layers import (
        point_size,
        reference_layer,
        spatial_layers,
        to_napari,
    )

    ref, spa = merfish
    _with_nan(spa)
    with pytest.raises(InputError) as err:
        spatial_layers(spa)
    msg = str(err.value)
    assert "\n" not in msg
    assert "2 of 750 cells of the spatial data have NaN or infinite coordinates" in msg
    assert repr(str(spa.obs_names[3])) in msg and "drop or fix those cells" in msg
    with pytest.raises(InputError, match="NaN or infinite"):
        to_napari(spa)
    assert np.isfinite(point_size(spa))
    ref.obsm["X_umap"] = np.zeros((ref.n_obs, 2))
    _with_nan(ref, "X_umap", rows=(0,))
    with pytest.raises(InputError, match=r"1 of 1,308 cells of the reference .*obsm\['X_umap'\]"):
        reference_layer(ref)


def test_reader_reports_nan_coordinates_without_a_traceback(
    make_napari_viewer_proxy, tmp_path, merfish
):
    from napari_spatial_impute.plugin.reader import read_h5ad_layers

    ref, spa = merfish
    good = tmp_path / "good.h5ad"
    spa.write_h5ad(good)
    bad = tmp_path / "bad.h5ad"
    _with_nan(spa).write_h5ad(bad)
    viewer = make_napari_viewer_proxy()
    n = len(notification_manager.records)
    viewer.open(str(bad), plugin="napari-spatial-impute")  # was a ValueError from cKDTree
    assert len(viewer.layers) == 0 and viewer_model(viewer).spatial is None
    errors = _new_errors(n)
    assert len(errors) == 1 and errors[0].startswith("bad.h5ad: 2 of 750 cells")
    assert "drop or fix those cells" in errors[0] and "\n" not in errors[0]
    # one bad file among several: the others still open
    layers = read_h5ad_layers([str(bad), str(good)])
    assert len(layers) == 1 and layers[0][1]["name"] == "good"


def test_explore_reports_nan_coordinates(make_napari_viewer_proxy, qtbot):
    from _explore_data import load_into

    from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget

    viewer = make_napari_viewer_proxy()
    model = load_into(viewer)
    w = ExploreWidget(viewer)
    qtbot.addWidget(w)
    result = _with_nan(model.result.copy())
    model.set_result(result)  # must not raise in the signal handler
    assert np.isfinite(w.size_spin.value())
    n = len(notification_manager.records)
    assert w.show_gene("Gad1") == []
    errors = _new_errors(n)
    assert len(errors) == 1 and "NaN or infinite coordinates" in errors[0]
    assert len(viewer.layers) == 0


def test_load_widget_reports_nan_umap(make_napari_viewer_proxy, qtbot, tmp_path, merfish):
    from napari_spatial_impute.plugin.widgets.load_widget import LoadWidget

    viewer = make_napari_viewer_proxy()
    w = LoadWidget(viewer)
    qtbot.addWidget(w)
    ref, spa = merfish
    ref.obsm["X_umap"] = np.random.default_rng(0).random((ref.n_obs, 2))
    _with_nan(ref, "X_umap", rows=(5,))
    path = tmp_path / "ref.h5ad"
    ref.write_h5ad(path)
    w.reference_row.path.setText(str(path))
    n = len(notification_manager.records)
    worker = w.load()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: w.status.text().startswith("Error"), timeout=30_000)
    assert "NaN or infinite coordinates in obsm['X_umap']" in w.status.text()
    assert any("X_umap" in e for e in _new_errors(n))
    assert viewer_model(viewer).reference is not None and len(viewer.layers) == 0
