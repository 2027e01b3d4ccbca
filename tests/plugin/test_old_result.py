"""A result file written by version 0.1.0 (main before the reorganisation) still opens in the plugin.

``tests/data/result_v0.1.0.h5ad`` was written by ``napari-spatial-impute map`` at commit 22bdb22
(bundled MERFISH pair with a two-FOV column, 30 epochs, cluster key ``cell_type``, 8 imputed
genes; no sample column, so one layer per role). Keep it unchanged: it pins the result format
that users' files already have.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_spatial_impute.plugin.sync import viewer_model
from napari_spatial_impute.plugin.widgets.diagnostics_widget import DiagnosticsWidget
from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget
from napari_spatial_impute.viz.layers import plugin_meta

OLD = Path(__file__).parents[1] / "data" / "result_v0.1.0.h5ad"


def test_old_result_opens_explores_and_diagnoses(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    layers = viewer.open(str(OLD), plugin="napari-spatial-impute")
    # no sample column: one layer, its two FOVs a feature column
    assert [layer.name for layer in layers] == ["most likely cell_type"]
    (layer,) = layers
    assert len(layer.data) == 750
    model = viewer_model(viewer)
    assert model.result is not None and model.result.n_vars == 8
    fovs = model.result.obs["fov"].astype(str).to_numpy()
    assert sorted(set(fovs)) == ["A", "B"]
    rows = np.asarray(plugin_meta(layer)["rows"])
    np.testing.assert_array_equal(layer.features["fov"].astype(str).to_numpy(), fovs[rows])

    explore = ExploreWidget(viewer)
    qtbot.addWidget(explore)
    shown = explore.show_gene("sp9")
    assert sorted(layer.name for layer in shown) == ["Sp9 imputed", "Sp9 measured"]
    imputed = next(layer for layer in shown if plugin_meta(layer)["kind"] == "imputed")
    values = imputed.features["Sp9"].to_numpy()
    assert values.shape == (750,) and np.isfinite(values).all()
    assert {"imputed", "measured"} <= {plugin_meta(layer)["kind"] for layer in shown}
    # the hover text names each cell's FOV
    rows = np.asarray(plugin_meta(imputed)["rows"])
    np.testing.assert_array_equal(imputed.features["fov"].astype(str).to_numpy(), fovs[rows])
    clusters = explore.show_cluster()
    assert len(clusters) == 1 and len(clusters[0].data) == 750
    # FOV navigation knows the two FOVs of the old file and goes to one
    nav = explore.navigator
    assert [nav.fov_list.item(i).text() for i in range(nav.fov_list.count())] == ["A", "B"]
    assert explore.go_to_fov("B")
    b = model.result.obsm["spatial"][fovs == "B"]
    assert np.allclose(viewer.camera.center[-2:], (b[:, ::-1].min(0) + b[:, ::-1].max(0)) / 2)

    diagnostics = DiagnosticsWidget(viewer)
    qtbot.addWidget(diagnostics)
    axes = [ax for ax in diagnostics.train_fig.axes if ax.axison]
    assert len(axes) == 5 and axes[0].get_title() == "training scores"
    assert len(axes[4].lines[0].get_xdata()) == 30  # the stored history: one point per epoch
    assert "training score" in diagnostics.train_info.text()
    # no map choice in a 0.1.0 file: nothing said about one
    assert not diagnostics.choice_info.isVisibleTo(diagnostics)
    assert diagnostics.choice_info.text() == ""
