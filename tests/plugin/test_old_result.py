"""A result file written by version 0.1.0 (main before the reorganisation) still opens in the plugin.

``tests/data/result_v0.1.0.h5ad`` was written by ``napari-spatial-impute map`` at commit 22bdb22
(bundled MERFISH pair with a two-FOV column, 30 epochs, cluster key ``cell_type``, 8 imputed
genes). Keep it unchanged: it pins the result format that users' files already have.
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
    assert sorted(layer.name for layer in layers) == [
        "most likely cell_type · FOV A",
        "most likely cell_type · FOV B",
    ]
    assert sum(len(layer.data) for layer in layers) == 750
    model = viewer_model(viewer)
    assert model.result is not None and model.result.n_vars == 8

    explore = ExploreWidget(viewer)
    qtbot.addWidget(explore)
    shown = explore.show_gene("sp9")
    values = np.concatenate(
        [layer.features["Sp9"].to_numpy() for layer in shown if "imputed" in layer.name]
    )
    assert values.shape == (750,) and np.isfinite(values).all()
    assert {"imputed", "measured"} <= {plugin_meta(layer)["kind"] for layer in shown}
    assert len(explore.show_cluster()) == 2

    diagnostics = DiagnosticsWidget(viewer)
    qtbot.addWidget(diagnostics)
    axes = [ax for ax in diagnostics.train_fig.axes if ax.axison]
    assert len(axes) == 5 and axes[0].get_title() == "training scores"
    assert len(axes[4].lines[0].get_xdata()) == 30  # the stored history: one point per epoch
    assert "training score" in diagnostics.train_info.text()
