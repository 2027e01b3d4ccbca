"""Diagnostics widget: score panels, cell-type validation, CV table and gene clicks."""

from __future__ import annotations

import numpy as np
import pytest
from _explore_data import cv_table
from qtpy.QtCore import Qt

from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.plugin.widgets.diagnostics_widget import DiagnosticsWidget


@pytest.fixture
def widget(make_widget):
    return make_widget(DiagnosticsWidget)


def test_training_panels(widget):
    viewer, model, w = widget
    axes = [ax for ax in w.train_fig.axes if ax.axison]
    assert len(axes) == 5
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "training scores"
    assert "reference" in titles[1] and "spatial" in titles[2] and "difference" in titles[3]
    n_train = int(model.result.var["is_training"].sum())
    assert sum(p.get_height() for p in axes[0].patches) == n_train
    for ax in axes[1:4]:
        assert len(ax.collections[0].get_offsets()) == n_train
    # the default (auto) chose the ensemble: nothing trained, so the choice takes the epoch panel
    assert model.result.uns["spatial_impute"]["params"]["method"] == "ensemble"
    assert "ensemble map (nothing trained)" in w.train_info.text()
    assert titles[4].startswith("map choice")


def test_training_panel_shows_the_map_choice(widget):
    """Both candidates with their held-out median Pearson, the size baseline, the chosen map."""
    viewer, model, w = widget
    choice = model.result.uns["spatial_impute"]["map_choice"]
    scores = dict(zip(choice["candidates"], choice["inner_median_pearson"], strict=True))
    assert set(scores) == {"ensemble", "tangram"} and choice["chosen"] == "ensemble"
    text = w.choice_info.text()
    assert w.choice_info.isVisibleTo(w)
    assert f"ensemble {scores['ensemble']:.3f} (chosen)" in text
    assert f"tangram {scores['tangram']:.3f}" in text and "tangram 0.000 (chosen)" not in text
    assert f"size baseline {choice['size_baseline']:.3f}" in text
    assert f"{len(choice['held_genes'])} held-out training genes" in text
    assert not w.choice_warning.isVisibleTo(w)
    ax = next(ax for ax in w.train_fig.axes if ax.get_title().startswith("map choice"))
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [scores["ensemble"], scores["tangram"]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ensemble (chosen)", "tangram"]
    (line,) = ax.get_lines()  # the size baseline
    np.testing.assert_allclose(line.get_ydata(), choice["size_baseline"])
    # a weak choice is said in orange too
    res = model.result.copy()
    res.uns["spatial_impute"]["map_choice"]["warning"] = "imputation is weak on these data: test"
    model.set_result(res)
    assert w.choice_warning.isVisibleTo(w)
    assert w.choice_warning.text() == "Warning: imputation is weak on these data: test"


def test_training_panels_of_a_tangram_map(widget):
    from napari_spatial_impute import load_merfish_hypothalamus, map_cells_to_space

    viewer, model, w = widget
    ref, spa = load_merfish_hypothalamus()
    res = map_cells_to_space(ref, spa, method="tangram", epochs=30, uncertainty=False)
    model.set_result(result_to_anndata(res, genes=list(ref.var_names[:5])))
    axes = [ax for ax in w.train_fig.axes if ax.axison]
    assert len(axes[4].lines[0].get_xdata()) == 30  # one point per epoch
    assert w.train_info.text().startswith("training score")
    # a forced method: no choice ran, the panels and text are as before
    assert len(axes) == 5 and not w.choice_info.isVisibleTo(w)
    # a Tangram map chosen by auto: its epochs and the choice, six panels
    adata = model.result.copy()
    adata.uns["spatial_impute"]["map_choice"] = {
        "chosen": "tangram",
        "candidates": np.array(["ensemble", "tangram"], dtype=object),
        "inner_median_pearson": np.array([0.21, 0.27]),
        "size_baseline": 0.3,
        "held_genes": np.array(["a", "b", "c"], dtype=object),
        "n_cells": 750,
        "reason": "",
        "summary": "map: tangram, chosen on 3 held-out training genes",
        "warning": "",
    }
    model.set_result(adata)
    axes = [ax for ax in w.train_fig.axes if ax.axison]
    assert len(axes) == 6 and len(axes[4].lines[0].get_xdata()) == 30
    assert axes[5].get_title().startswith("map choice")
    assert "ensemble 0.210, tangram 0.270 (chosen); size baseline 0.300" in w.choice_info.text()


def test_cell_type_validation(widget):
    viewer, model, w = widget
    markers = [g.strip() for g in w.markers_edit.text().split(",") if g.strip()]
    assert 1 <= len(markers) <= 6
    assert len(w.val_fig.axes) == len(markers)
    w.markers_edit.setText("gad1, Slc17a6")
    table = w.update_validation()
    assert sorted(table["gene"].unique()) == ["Gad1", "Slc17a6"]
    assert len(w.val_fig.axes) == 2
    assert table[["measured", "predicted"]].stack().between(0, 1).all()
    bars = w.val_fig.axes[0].patches
    assert len(bars) == 2 * table["cell_type"].nunique()


def test_unknown_marker_genes_are_named(widget):
    """Issue 24 (10d): an unknown marker gene was dropped without a word; the known ones are
    kept, and the others named in one line."""
    viewer, model, w = widget
    w.markers_edit.setText("gad1, Notagene, Slc17a6, xyz1")
    table = w.update_validation()
    assert sorted(table["gene"].unique()) == ["Gad1", "Slc17a6"]
    assert not w.markers_info.isHidden()
    text = w.markers_info.text()
    assert "Notagene" in text and "xyz1" in text and "Gad1" not in text
    assert "\n" not in text
    w.markers_edit.setText("Notagene")  # none known: the defaults, and it says so
    table = w.update_validation()
    assert table is not None and len(table) and "Notagene" in w.markers_info.text()
    assert "one per cluster" in w.markers_info.text()
    w.markers_edit.setText("Gad1")
    w.update_validation()
    assert w.markers_info.isHidden()


def test_no_cv_then_cv_table_sortable_and_clickable(widget, qtbot):
    viewer, model, w = widget
    assert w.cv_table.rowCount() == 0
    cv = cv_table()
    model.set_cv_table(cv)
    assert w.cv_table.rowCount() == len(cv)
    assert "median Pearson" in w.cv_info.text()
    header = [w.cv_table.horizontalHeaderItem(j).text() for j in range(w.cv_table.columnCount())]
    pc = header.index("pearson")
    shown = [float(w.cv_table.item(i, pc).text()) for i in range(w.cv_table.rowCount())]
    finite = [v for v in shown if np.isfinite(v)]
    assert finite == sorted(finite, reverse=True)
    w.cv_table.sortItems(pc, Qt.SortOrder.AscendingOrder)
    shown = [float(w.cv_table.item(i, pc).text()) for i in range(w.cv_table.rowCount())]
    finite = [v for v in shown if np.isfinite(v)]
    assert finite == sorted(finite)
    gene = w.cv_table.item(0, header.index("gene")).text()
    w._on_cv_clicked(0, 0)
    names = sorted(layer.name for layer in viewer.layers)
    assert f"{gene} imputed" in names  # one layer of every sample (issue 24)
    # the next click recolours the same layers
    gene2 = w.cv_table.item(1, header.index("gene")).text()
    w._on_cv_clicked(1, 0)
    assert len(viewer.layers) == len(names)
    assert f"{gene2} imputed" in [layer.name for layer in viewer.layers]


def test_pick_on_score_panel_opens_gene(widget):
    viewer, model, w = widget
    scatter = w.train_fig.axes[1].collections[0]

    class Event:
        artist = scatter
        ind = np.array([0])

    w._on_pick(Event())
    gene = scatter.genes[0]
    assert f"{gene} imputed" in [layer.name for layer in viewer.layers]


def test_empty_model(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    w = DiagnosticsWidget(viewer)
    qtbot.addWidget(w)
    assert "No mapping result" in w.train_info.text()
    assert w.open_gene("Gad1") == []


def test_run_cross_validation_in_worker(widget, qtbot):
    viewer, model, w = widget
    w.folds_spin.setValue(2)
    w.cv_epochs_spin.setValue(5)
    worker = w.run_cv()
    assert not w.cv_run_button.isEnabled()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: model.cv_table is not None, timeout=5000)
    assert set(model.cv_table["fold"]) == {0, 1}
    assert len(model.cv_table) == int(model.result.var["is_shared"].sum())
    assert w.cv_table.rowCount() == len(model.cv_table)
    assert w.cv_run_button.isEnabled() and not w.cv_progress.isVisible()


def test_stop_cross_validation(widget, qtbot):
    from _explore_data import tangram_result

    viewer, model, w = widget
    model.set_result(tangram_result())  # epochs to stop in
    w.folds_spin.setValue(3)
    w.cv_epochs_spin.setValue(5000)
    worker = w.run_cv()
    with qtbot.waitSignal(worker.yielded, timeout=60_000):
        pass
    assert "fold 1 of 3" in w.cv_info.text()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        w.stop_cv()
    assert model.cv_table is None
    assert w.cv_run_button.isEnabled()
    # issue 10: the status said "cross-validating 3 folds..." for ever
    qtbot.waitUntil(lambda: "stopped" in w.cv_info.text(), timeout=5000)
    assert "cross-validating" not in w.cv_info.text()


def test_cv_progress_is_throttled(widget, qtbot, monkeypatch):
    """Issue 10: one GUI update per epoch nested napari's progress bar; updates are grouped by
    the throttle, and the last one (all folds done) always arrives. With an interval longer than
    the run, 3,000 epochs make exactly two updates: the first at once, the last at the end (no
    clock in the test: issue 24)."""
    from _explore_data import tangram_result

    from napari_spatial_impute.plugin import workers

    viewer, model, w = widget
    model.set_result(tangram_result())
    assert w.cv_epochs_spin.isEnabled()
    w.folds_spin.setValue(2)
    w.cv_epochs_spin.setValue(1500)
    monkeypatch.setattr(workers, "UPDATE_INTERVAL", 1e6)
    steps = []
    on_progress = w._on_cv_progress
    w._on_cv_progress = lambda step: (steps.append(step), on_progress(step))
    worker = w.run_cv()
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass
    qtbot.waitUntil(lambda: model.cv_table is not None, timeout=5000)
    assert len(steps) == 2
    assert steps[-1].done == steps[-1].total == 3000
    assert steps[0].done < steps[-1].done


def test_open_cv_csv(widget, tmp_path, monkeypatch):
    viewer, model, w = widget
    cv = cv_table()
    cv.to_csv(tmp_path / "cv.csv", index=False)
    table = w.open_cv_table(str(tmp_path / "cv.csv"))
    assert len(table) == len(cv) and w.cv_table.rowCount() == len(cv)
    seen = []
    monkeypatch.setattr(
        "napari_spatial_impute.plugin.widgets.diagnostics_widget.notify_error", seen.append
    )
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert w.open_cv_table(str(tmp_path / "bad.csv")) is None
    assert seen and ("gene" in str(seen[0]) or "pearson" in str(seen[0]))


def test_cv_kwargs_from_result_params(widget):
    from _explore_data import tangram_result

    from napari_spatial_impute.plugin.cv_worker import cv_kwargs

    viewer, model, w = widget
    kw = cv_kwargs(tangram_result().uns["spatial_impute"]["params"], 7)
    assert kw["epochs"] == 7 and kw["cluster_key"] == "cell_type" and kw["method"] == "tangram"
    assert "genes" not in kw and "n_markers" not in kw
    assert kw["tol"] == 0.001 and kw["patience"] == 50  # the default plateau, as stored
    assert cv_kwargs({"tol": 0.01, "method": "tangram"}, 7)["tol"] == 0.01
    # an unset tol is stored as -1 (which the engine refuses): every epoch ran, so in each fold
    assert cv_kwargs({"tol": -1.0, "method": "tangram"}, 7)["tol"] is None
    # the ensemble map (the fixture's result) trains nothing: no Tangram settings are passed on
    kw = cv_kwargs(model.result.uns["spatial_impute"]["params"], 7)
    assert kw["method"] == "ensemble" and "epochs" not in kw and "engine" not in kw
    # a result from before the map method: neighbours=False imputed with its Tangram map
    old = {"mode": "cells", "engine": "exact", "epochs": 30, "neighbours": False}
    kw = cv_kwargs(old, 5)
    assert kw["method"] == "tangram" and kw["epochs"] == 5 and kw["engine"] == "exact"


def test_cv_of_the_ensemble_map_counts_folds(widget, qtbot):
    viewer, model, w = widget
    assert not w.cv_epochs_spin.isEnabled()  # nothing to train
    w.folds_spin.setValue(3)
    steps = []
    on_progress = w._on_cv_progress
    w._on_cv_progress = lambda step: (steps.append(step), on_progress(step))
    worker = w.run_cv()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: model.cv_table is not None, timeout=5000)
    assert steps[-1].done == steps[-1].total == 3
    assert w.cv_progress.maximum() == 3


def test_cv_error_is_notified(widget, qtbot, monkeypatch):
    viewer, model, w = widget
    seen = []
    monkeypatch.setattr(
        "napari_spatial_impute.plugin.widgets.diagnostics_widget.notify_error", seen.append
    )
    spa = model.spatial.copy()
    del spa.obsm["spatial"]  # the engine refuses spatial data without coordinates
    model.set_spatial(spa)
    w.run_cv()
    qtbot.waitUntil(lambda: bool(seen) and w.cv_run_button.isEnabled(), timeout=20_000)
    assert "obsm['spatial']" in str(seen[0]) and "\n" not in str(seen[0])
    assert model.cv_table is None


def test_result_without_clusters(make_napari_viewer_proxy, qtbot, monkeypatch):
    from _explore_data import merfish_with_fovs

    from napari_spatial_impute import map_cells_to_space
    from napari_spatial_impute.plugin.model import get_model

    ref, spa, _ = merfish_with_fovs()
    res = result_to_anndata(map_cells_to_space(ref, spa, epochs=5))
    viewer = make_napari_viewer_proxy()
    seen = []
    monkeypatch.setattr(
        "napari_spatial_impute.plugin.widgets.diagnostics_widget.notify_error", seen.append
    )
    w = DiagnosticsWidget(viewer)
    qtbot.addWidget(w)
    get_model(viewer).set_result(res)
    assert not seen
    assert "no cell types" in w.val_fig.axes[0].texts[0].get_text()
    # the ensemble map (chosen by auto): no epoch panel, the choice in its place
    assert len([ax for ax in w.train_fig.axes if ax.axison]) == 5
    # the Explore widget works too, without cluster controls or cluster hover text
    from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget
    from napari_spatial_impute.viz.explore import TOP_CLUSTER_COLUMNS

    ex = ExploreWidget(viewer)
    qtbot.addWidget(ex)
    assert not ex.cluster_button.isEnabled() and not ex.predicted_button.isEnabled()
    layers = ex.show_gene("Gad1")
    assert layers
    for layer in layers:  # the cell and its FOV, no cluster columns
        assert {"cell", "fov"} <= set(layer.features.columns)
        assert not set(TOP_CLUSTER_COLUMNS) & set(layer.features.columns)


@pytest.mark.parametrize(("width", "ncols"), [(420, 1), (1400, 4)])
def test_panels_fit_the_dock_width(widget, qtbot, width, ncols):
    """Issue 12: a narrow dock stacks the panels (scrolling), a wide one puts them side by side."""
    from napari_spatial_impute.plugin.widgets.figure_panel import PANEL_HEIGHT

    viewer, model, w = widget
    w.resize(width, 800)
    w.show()
    panel = w.train_panel
    qtbot.waitUntil(lambda: panel.ncols == ncols, timeout=5000)
    rows = -(-5 // ncols)
    assert panel.canvas.minimumHeight() == rows * PANEL_HEIGHT
    visible = [ax for ax in w.train_fig.axes if ax.axison]
    assert len({round(ax.get_position().x0, 2) for ax in visible}) == min(ncols, 4)


def test_every_figure_can_be_saved(widget, tmp_path):
    viewer, model, w = widget
    for panel, name in ((w.train_panel, "t.png"), (w.val_panel, "v.svg")):
        assert panel.save(tmp_path / name).stat().st_size > 1000
    from napari_spatial_impute.viz.plots import save_figure

    assert w.reliability.save_button.isVisibleTo(w.reliability)
    assert save_figure(w.reliability.fig, tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")


def test_a_new_result_draws_only_the_tab_in_sight(make_napari_viewer, qtbot):
    """Issue 24 (Map's end without freezes): a new result redrew every figure of every tab on
    the main thread (the cell-type validation alone 1.4 s at 75,000 cells) while one tab is in
    sight; the others are drawn when shown."""
    from _explore_data import merfish_with_fovs

    from napari_spatial_impute.plugin.model import get_model

    viewer = make_napari_viewer(show=True)
    w = DiagnosticsWidget(viewer)
    viewer.window.add_dock_widget(w, name="Diagnostics")
    w.tabs.setCurrentIndex(0)
    qtbot.waitUntil(w.isVisible, timeout=5000)
    drawn = {"training": 0, "validation": 0}
    for key, panel in (("training", w.train_panel), ("validation", w.val_panel)):
        draw = panel._draw
        panel._draw = lambda fig, ncols, draw=draw, key=key: (
            drawn.__setitem__(key, drawn[key] + 1),
            draw(fig, ncols),
        )
    get_model(viewer).set_result(merfish_with_fovs()[2])
    assert drawn == {"training": 1, "validation": 0}
    assert not w.val_fig.axes and w._val_table is None, "nor its table computed"
    w.tabs.setCurrentIndex(1)  # the user looks at it: computed and drawn now, once
    qtbot.waitUntil(lambda: drawn["validation"] == 1, timeout=5000)
    assert len(w.val_fig.axes) >= 1 and w._val_table is not None
    get_model(viewer).set_result(merfish_with_fovs()[2])  # the training tab is out of sight
    assert drawn == {"training": 1, "validation": 2} and w.train_panel.pending
    w.tabs.setCurrentIndex(0)
    qtbot.waitUntil(lambda: drawn["training"] == 2, timeout=5000)
    assert not w.train_panel.pending
