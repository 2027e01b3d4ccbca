"""Prediction intervals and reliability in the Explore and Diagnostics widgets (MERFISH, two
samples "A" and "B" of two FOVs each: one layer per role for both samples)."""

from __future__ import annotations

import numpy as np
import pytest
from _explore_data import cv_table, load_into
from napari.utils.colormaps import ensure_colormap
from qtpy.QtCore import Qt

from napari_spatial_impute.plugin.widgets.diagnostics_widget import DiagnosticsWidget
from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget
from napari_spatial_impute.plugin.widgets.uncertainty_controls import MASK_KEY, WIDE_COLUMN
from napari_spatial_impute.viz.explore import robust_limits, values
from napari_spatial_impute.viz.intervals import GREY
from napari_spatial_impute.viz.layers import plugin_meta


def strip_uncertainty(result):
    """A result as an older version wrote it: no intervals, no reliability."""
    for k in list(result.layers.keys()):
        del result.layers[k]
    result.var = result.var.drop(columns=["predicted_pearson"])
    result.obs = result.obs.drop(columns=["uncertainty_group"])
    result.uns["spatial_impute"].pop("uncertainty", None)
    return result


def widths_of(result, gene, level, rows=None):
    j = result.var_names.get_loc(gene)
    w = 2.0 * np.asarray(result.layers[f"interval_{level}_halfwidth"][:, j], dtype=np.float64)
    return w if rows is None else w[rows]


@pytest.fixture
def explore(make_widget):
    return make_widget(ExploreWidget)


def test_controls_offered_with_levels(explore):
    viewer, model, w = explore
    u = w.uncertainty
    assert not u.isHidden()
    assert [u.level_combo.itemText(i) for i in range(u.level_combo.count())] == ["90", "67"]
    assert u.interval_level() is None  # unticked by default: nothing extra is added
    w.show_gene("Gad1")
    assert not any("interval" in layer.name for layer in viewer.layers)


@pytest.mark.parametrize("level", ["90", "67"])
def test_interval_layers_names_values_shared_limits(explore, level):
    viewer, model, w = explore
    res = model.result
    w.uncertainty.interval_check.setChecked(True)
    w.uncertainty.level_combo.setCurrentText(level)
    w.gene_edit.setText("gad1")
    layers = w.show_gene()
    interval = [lay for lay in layers if plugin_meta(lay)["kind"] == "interval"]
    assert [lay.name for lay in interval] == [f"Gad1 {level}% interval width"]
    assert len(viewer.layers) == 3  # imputed, measured and interval, both samples in each
    limits = robust_limits(widths_of(res, "Gad1", level))
    (lay,) = interval
    md = plugin_meta(lay)
    rows = md["rows"]
    assert sorted(rows) == list(range(res.n_obs))  # every cell in one layer
    assert md["level"] == level
    column = f"Gad1 {level}% interval width"
    assert np.allclose(lay.features[column], widths_of(res, "Gad1", level, rows), rtol=1e-6)
    assert np.allclose(md["limits"], limits) and md["colormap"] == "plasma"
    assert lay.face_color_mode == "direct"
    expected = _expected_colors(lay.features[column].to_numpy(), limits, "plasma")
    assert np.abs(np.asarray(lay.face_color) - expected).max() < 0.02
    assert np.allclose(lay.data[:, ::-1], res.obsm["spatial"][rows])
    assert {"cell", "fov", "sample", "top cluster", "p"} <= set(lay.features.columns)
    assert list(lay.features["cell"]) == list(res.obs_names[rows])
    assert list(lay.features["fov"].astype(str)) == list(res.obs["fov"].iloc[rows].astype(str))
    # the interval is wider than zero and differs between cells
    assert limits[1] > limits[0] > 0


def test_interval_beside_then_another_gene_then_back(explore):
    """Issue 24 (5): interval width beside imputed, then another gene: psygnal's EmitLoopError
    from the colour bar, "Slc17a6 imputed" beside "Gad1 measured", the status on Gad1; Gad1
    again added a second imputed layer."""
    from napari.utils.notifications import notification_manager

    viewer, model, w = explore
    w.uncertainty.interval_check.setChecked(True)
    n = len(notification_manager.records)
    for gene in ("Gad1", "Slc17a6", "Gad1", "Slc17a6"):
        w.show_gene(gene)
        kinds = sorted(plugin_meta(lay)["kind"] for lay in viewer.layers)
        assert kinds == ["imputed", "interval", "measured"]
        assert {plugin_meta(lay)["value"] for lay in viewer.layers} == {gene}
        assert all(lay.name.startswith(f"{gene} ") for lay in viewer.layers)
        assert w.status.text().startswith(f"{gene}:")
        titles = [r["title"] for r in w.scales.shown]
        assert len(titles) == 3 and all(t.startswith(f"{gene} · ") for t in titles)
    assert notification_manager.records[n:] == []


def test_regene_recolours_interval_layers(explore):
    viewer, model, w = explore
    w.uncertainty.interval_check.setChecked(True)
    first = w.show_gene("Gad1")
    second = w.show_gene("Slc17a6")
    assert {id(x) for x in first} == {id(x) for x in second}
    names = sorted(layer.name for layer in viewer.layers)
    assert "Slc17a6 90% interval width" in names and len(names) == 3
    # unticked: the next gene drops the interval layers of the recoloured gene
    w.uncertainty.interval_check.setChecked(False)
    w.show_gene("Gad1")
    assert not any("interval" in layer.name for layer in viewer.layers)


def test_hover_has_the_genes_interval(explore):
    viewer, model, w = explore
    layer = [lay for lay in w.show_gene("Gad1") if plugin_meta(lay)["kind"] == "imputed"][0]
    rows = plugin_meta(layer)["rows"]
    assert np.allclose(
        layer.features["90% interval ±"], widths_of(model.result, "Gad1", "90", rows) / 2
    )


def _expected_colors(values_, limits, colormap="viridis"):
    lo, hi = limits
    return ensure_colormap(colormap).map(np.clip((values_ - lo) / (hi - lo), 0, 1))


def test_threshold_greys_out_exactly_the_wide_cells(explore):
    viewer, model, w = explore
    res = model.result
    layers = [lay for lay in w.show_gene("Gad1") if plugin_meta(lay)["kind"] == "imputed"]
    before = [lay.face_color.copy() for lay in layers]
    u = w.uncertainty
    all_widths = widths_of(res, "Gad1", "90")
    # the default threshold is the gene's median width
    assert u.threshold_spin.value() == pytest.approx(np.median(all_widths), rel=2e-3)
    threshold = float(np.quantile(all_widths, 0.7))
    u.threshold_spin.setValue(threshold)
    thr = u.threshold_spin.value()  # as rounded by the spin box
    u.mask_check.setChecked(True)
    n_wide = 0
    for lay, old in zip(layers, before, strict=True):
        rows = plugin_meta(lay)["rows"]
        wide = widths_of(res, "Gad1", "90", rows) > thr
        assert 0 < wide.sum() < len(wide)
        assert np.array_equal(lay.features[WIDE_COLUMN].to_numpy(), wide)
        assert np.allclose(lay.face_color[wide], GREY, atol=1e-6)
        # the other cells keep their colour (same colormap and range as before)
        assert np.allclose(lay.face_color[~wide], old[~wide], atol=1e-6)
        limits = plugin_meta(lay)["limits"]
        expected = _expected_colors(values(res, "imputed", "Gad1", rows), limits)
        assert np.abs(lay.face_color[~wide] - expected[~wide]).max() < 0.02
        assert lay.face_color_mode == "direct" and lay.shown.all()
        assert len(viewer.layers) == 2  # no layer was added for the mask
        n_wide += int(wide.sum())
    assert f"{n_wide} of {res.n_obs} cells greyed out" in u.note.text()
    # hide instead of grey out: the same cells, through `shown`
    u.mode_combo.setCurrentText("hide")
    for lay, old in zip(layers, before, strict=True):
        wide = widths_of(res, "Gad1", "90", plugin_meta(lay)["rows"]) > thr
        assert np.array_equal(lay.shown, ~wide)
        # napari 0.9 draws 2D points whatever `shown` says: the hidden ones are transparent
        assert np.allclose(lay.face_color[~wide], old[~wide], atol=1e-6)
        assert np.all(lay.face_color[wide][:, 3] == 0)
    # unticked: everything back as it was
    u.mask_check.setChecked(False)
    for lay, old in zip(layers, before, strict=True):
        assert lay.shown.all() and MASK_KEY not in plugin_meta(lay)
        assert WIDE_COLUMN not in lay.features.columns
        assert np.allclose(lay.face_color, old, atol=1e-6)


def test_mask_follows_the_gene_and_the_level(explore):
    viewer, model, w = explore
    res = model.result
    u = w.uncertainty
    u.mask_check.setChecked(True)
    w.show_gene("Gad1")
    w.show_gene("Slc17a6")  # recoloured layers are masked again with the new gene's widths
    thr = u.threshold_spin.value()
    assert thr == pytest.approx(np.median(widths_of(res, "Slc17a6", "90")), rel=2e-3)
    for lay in [lay for lay in viewer.layers if plugin_meta(lay)["kind"] == "imputed"]:
        wide = widths_of(res, "Slc17a6", "90", plugin_meta(lay)["rows"]) > thr
        assert np.array_equal(lay.features[WIDE_COLUMN].to_numpy(), wide)
        assert plugin_meta(lay)[MASK_KEY]["level"] == "90"
    u.level_combo.setCurrentText("67")
    thr67 = u.threshold_spin.value()
    assert thr67 == pytest.approx(np.median(widths_of(res, "Slc17a6", "67")), rel=2e-3)
    for lay in [lay for lay in viewer.layers if plugin_meta(lay)["kind"] == "imputed"]:
        wide = widths_of(res, "Slc17a6", "67", plugin_meta(lay)["rows"]) > thr67
        assert np.array_equal(lay.features[WIDE_COLUMN].to_numpy(), wide)


def test_new_result_keeps_interval_layers_and_mask(explore):
    viewer, model, w = explore
    w.uncertainty.interval_check.setChecked(True)
    w.uncertainty.mask_check.setChecked(True)
    w.show_gene("Gad1")
    new = model.result.copy()
    new.layers["interval_90_halfwidth"] = new.layers["interval_90_halfwidth"] * 2
    model.set_result(new)
    assert len(viewer.layers) == 3
    lay = viewer.layers["Gad1 90% interval width"]
    rows = plugin_meta(lay)["rows"]
    assert np.allclose(lay.features["Gad1 90% interval width"], widths_of(new, "Gad1", "90", rows))
    imp = viewer.layers["Gad1 imputed"]
    thr = w.uncertainty.threshold_spin.value()
    wide = widths_of(new, "Gad1", "90", plugin_meta(imp)["rows"]) > thr
    assert np.array_equal(imp.features[WIDE_COLUMN].to_numpy(), wide)


def test_result_without_uncertainty(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    model = load_into(viewer)
    strip_uncertainty(model.result)
    w = ExploreWidget(viewer)
    qtbot.addWidget(w)
    assert w.uncertainty.isHidden() and w.uncertainty.level() is None
    w.uncertainty.interval_check.setChecked(True)
    w.uncertainty.mask_check.setChecked(True)
    layers = w.show_gene("Gad1")
    assert sorted(lay.name for lay in layers) == [
        "Gad1 imputed",
        "Gad1 measured",
    ]
    for lay in layers:
        assert "90% interval ±" not in lay.features.columns
        assert MASK_KEY not in plugin_meta(lay) and lay.shown.all()
    d = DiagnosticsWidget(viewer)
    qtbot.addWidget(d)
    assert d.reliability.table.isHidden()
    assert "no prediction intervals" in d.reliability.summary.text()
    # a result with intervals later: the controls appear
    from _explore_data import merfish_with_fovs

    model.set_result(merfish_with_fovs()[2])
    assert not w.uncertainty.isHidden()
    assert d.reliability.table.rowCount() == model.result.n_vars


@pytest.fixture
def diagnostics(make_widget):
    return make_widget(DiagnosticsWidget)


def test_reliability_table_sorted_and_clickable(diagnostics):
    viewer, model, w = diagnostics
    panel = w.reliability
    res = model.result
    assert panel.table.rowCount() == res.n_vars
    shown = [float(v) for v in panel.column("predicted_pearson")]
    assert shown == sorted(shown, reverse=True)
    genes = panel.column("gene")
    assert sorted(genes) == sorted(map(str, res.var_names))
    expected = res.var.loc[genes, "predicted_pearson"].to_numpy()
    assert np.allclose(shown, expected, atol=1e-3 * np.abs(expected).max())
    flags = panel.column("is_training")
    assert flags == ["yes" if t else "no" for t in res.var.loc[genes, "is_training"]]
    # sort by training score, ascending
    panel.table.sortItems(3, Qt.SortOrder.AscendingOrder)
    scores = [float(v) for v in panel.column("train_score")]
    finite = [s for s in scores if np.isfinite(s)]
    assert finite == sorted(finite)
    # a click opens the gene's layers in every sample
    panel._on_clicked(0, 1)
    gene = panel.column("gene")[0]
    names = sorted(layer.name for layer in viewer.layers)
    assert f"{gene} imputed" in names
    panel.table.cellClicked.emit(1, 0)
    gene2 = panel.column("gene")[1]
    assert f"{gene2} imputed" in [layer.name for layer in viewer.layers]
    assert len(viewer.layers) == len(names)  # recoloured, not added


def test_calibration_summary(diagnostics):
    viewer, model, w = diagnostics
    text = w.reliability.summary.text()
    res = model.result
    for lv in ("90", "67"):
        mean = 2 * float(np.mean(res.layers[f"interval_{lv}_halfwidth"]))
        assert f"{lv}%: {mean:.3g}" in text
    n_cal = len(res.uns["spatial_impute"]["uncertainty"]["calibration_genes"])
    assert f"calibrated on {n_cal} training genes" in text
    assert w.tabs.tabText(w.tabs.count() - 1) == "Reliability"


def test_cv_table_uncertainty_columns_and_summary(diagnostics):
    viewer, model, w = diagnostics
    cv = cv_table()
    model.set_cv_table(cv)
    header = [w.cv_table.horizontalHeaderItem(j).text() for j in range(w.cv_table.columnCount())]
    for col in ("coverage_90", "coverage_67", "width_90", "width_67", "predicted_pearson"):
        assert col in header
    from napari_spatial_impute import summarize_cv

    summary = summarize_cv(cv)
    text = w.cv_info.text()
    assert f"90%: {summary['mean_coverage_90']:.2f}" in text
    assert f"67%: {summary['mean_coverage_67']:.2f}" in text
    assert f"reliability Spearman {summary['reliability_spearman']:.2f}" in text
    # an old table without those columns still shows, without them
    model.set_cv_table(cv[["gene", "fold", "pearson"]])
    header = [w.cv_table.horizontalHeaderItem(j).text() for j in range(w.cv_table.columnCount())]
    assert header == ["gene", "fold", "pearson"]
    assert "coverage" not in w.cv_info.text() and "Spearman" not in w.cv_info.text()


def test_reliability_plot_calibration_then_cv_and_pick(diagnostics):
    viewer, model, w = diagnostics
    res = model.result
    axes = w.reliability.fig.axes
    assert len(axes) == 2
    assert sum(p.get_height() for p in axes[0].patches) == res.n_vars  # stacked histogram
    scatter = axes[1].collections[0]
    info = res.uns["spatial_impute"]["uncertainty"]
    assert len(scatter.get_offsets()) == np.isfinite(info["inner_pearson"]).sum()
    assert "calibration" in axes[1].get_ylabel()
    cv = cv_table()
    model.set_cv_table(cv)
    axes = w.reliability.fig.axes
    scatter = axes[1].collections[0]
    ok = np.isfinite(cv["pearson"]) & np.isfinite(cv["predicted_pearson"])
    assert np.allclose(
        scatter.get_offsets(), cv.loc[ok, ["predicted_pearson", "pearson"]].to_numpy()
    )
    assert "cross-validation" in axes[1].get_ylabel()

    class Pick:
        artist = scatter
        ind = np.array([0])

    w.reliability._on_pick(Pick())
    gene = scatter.genes[0]
    assert f"{gene} imputed" in [layer.name for layer in viewer.layers]
