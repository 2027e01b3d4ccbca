"""Image-linked exploration: label images aligned to cells, clicks, painted values."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _explore_data import load_into

from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.io.datasets import shared_data_dir
from napari_spatial_impute.plugin.model import get_model
from napari_spatial_impute.plugin.widgets.image_widget import ImageWidget
from napari_spatial_impute.viz.explore import values
from napari_spatial_impute.viz.layers import plugin_meta, to_napari
from napari_spatial_impute.viz.sections import fov_rows

DATA = shared_data_dir() or Path("/nonexistent-shared-data")


def _synthetic_labels(result, fov, scale=2.0, offset=(-4000.0, 1000.0)):
    """Square cells around each cell of one FOV, in an image with pixel = ``scale`` units."""
    rows = fov_rows(result, "fov")[fov]
    yx = to_napari(result, rows, ndim=2)
    rc = np.round((yx - np.array(offset)) / scale).astype(int)
    shape = rc.max(0) + 8
    labels = np.zeros(shape, dtype=np.int32)
    for i, (r, c) in enumerate(rc):
        labels[r - 1 : r + 2, c - 1 : c + 2] = i + 1
    result.obs["label"] = 0
    result.obs.iloc[rows, result.obs.columns.get_loc("label")] = np.arange(1, len(rows) + 1)
    return labels, rows


@pytest.fixture
def widget(make_widget, tmp_path):
    viewer, model, w = make_widget(ImageWidget)
    labels, rows = _synthetic_labels(model.result, "2")
    path = tmp_path / "labels_fov2.tif"
    tifffile.imwrite(path, labels)
    return viewer, model, w, path, rows


def test_open_fits_alignment(widget):
    viewer, model, w, path, rows = widget
    layer = w.open_labels(path)
    assert plugin_meta(layer)["fov"] == "2"  # guessed from the file name
    assert np.allclose(layer.scale, (2.0, 2.0), atol=0.02)
    assert "rms" in w.align_info.text()
    # every cell's centre lies on its own label
    yx = to_napari(model.result, rows, ndim=2)
    hits = [layer.get_value(tuple(p), world=True) for p in yx[:50]]
    assert hits == list(range(1, 51))


def test_manual_alignment(widget):
    viewer, model, w, path, rows = widget
    layer = w.open_labels(path)
    w.mode_combo.setCurrentText("manual")
    w.sy.setValue(3.0)
    w.tx.setValue(10.0)
    w.align()
    assert tuple(layer.scale) == (3.0, w.sx.value()) and layer.translate[1] == 10.0


def test_click_shows_cell_values(widget):
    viewer, model, w, path, rows = widget
    layer = w.open_labels(path)
    w.value_edit.setText("Gad1")
    pos = tuple(to_napari(model.result, rows[:1], ndim=2)[0])
    assert w.cell_at(layer, pos) == rows[0]

    class Event:
        position = pos

    w._on_click(layer, Event())
    text = w.cell_info.toPlainText()
    assert (
        model.result.obs_names[rows[0]] in text and "Gad1 imputed" in text and "top imputed" in text
    )
    background = (layer.translate[0] - 50.0, layer.translate[1] - 50.0)
    assert w.cell_at(layer, background) is None


def test_paint_values_onto_labels(widget):
    viewer, model, w, path, rows = widget
    layer = w.open_labels(path)
    painted = w.paint("Gad1", "imputed")
    assert painted.name == "Gad1 imputed · labels FOV 2"
    assert np.allclose(painted.scale, layer.scale) and np.allclose(
        painted.translate, layer.translate
    )
    img = np.asarray(painted.data)
    lab = np.asarray(layer.data)
    vals = values(model.result, "imputed", "Gad1", rows)
    for i in (0, 5, 17):
        assert np.allclose(img[lab == i + 1], vals[i])
    assert np.isnan(img[lab == 0]).all()
    # painting again replaces the layer instead of stacking, found by metadata: also when
    # the user (or napari's "[1]" renaming) changed its name
    n = len(viewer.layers)
    painted.name = "renamed by the user"
    w.paint("Gad1", "imputed")
    assert len(viewer.layers) == n and painted not in viewer.layers
    cluster = model.result.obsm["cluster_probabilities"].columns[0]
    prob = w.paint(cluster, "probability")
    assert prob.contrast_limits[0] == 0.0


def test_painted_labels_bar_is_titled(widget):
    """Issue 24 (7): the painted labels' colour bar had no title (the controller titled Points
    layers only); it gets the value's title, and one bar shows at a time."""
    from napari_spatial_impute.plugin.widgets.colorbars import _text_overlay

    viewer, model, w, path, rows = widget
    w.open_labels(path)
    first = w.paint("Gad1", "imputed")
    viewer.layers.selection.active = first
    assert _text_overlay(viewer).text.startswith("Gad1 · imputed")
    cluster = model.result.obsm["cluster_probabilities"].columns[0]
    prob = w.paint(cluster, "probability")
    viewer.layers.selection.active = prob
    assert _text_overlay(viewer).text == f"{cluster} · probability (0-1)"
    assert prob.colorbar.visible and not first.colorbar.visible


def test_bad_file_is_notified(widget, tmp_path, monkeypatch):
    viewer, model, w, path, rows = widget
    seen = []
    monkeypatch.setattr(
        "napari_spatial_impute.plugin.widgets.image_widget.notify_error",
        lambda e: seen.append(str(e)),
    )
    bad = tmp_path / "x.tif"
    bad.write_text("not an image")
    assert w.open_labels(bad) is None
    assert seen and len(viewer.layers) == 0


@pytest.mark.skipif(
    not (DATA / "iss_ca1" / "label_image.coo.npz").exists(), reason="iss_ca1 data not present"
)
def test_iss_ca1_real_label_image(make_napari_viewer_proxy, qtbot):
    import anndata as ad

    from napari_spatial_impute import map_cells_to_space

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ad.read_h5ad(DATA / "iss_ca1" / "reference_class_profiles.h5ad")
        spa = ad.read_h5ad(DATA / "iss_ca1" / "spatial.h5ad")
        res = result_to_anndata(map_cells_to_space(ref, spa, cluster_key="cell_class", epochs=10))
    viewer = make_napari_viewer_proxy()
    model = get_model(viewer)
    model.set_reference(ref)
    model.set_spatial(spa)
    model.set_keys(cluster_key="cell_class")
    model.set_result(res)
    w = ImageWidget(viewer)
    qtbot.addWidget(w)
    layer = w.open_labels(DATA / "iss_ca1" / "label_image.coo.npz")
    assert layer.data.shape == (5471, 7602)
    assert np.allclose(layer.scale, 1.0, atol=1e-6) and np.allclose(layer.translate, 0.0, atol=1e-3)
    gene = str(res.var_names[0])
    painted = w.paint(gene, "imputed")
    cell = 0
    label = int(res.obs_names[cell].split("_")[1])
    assert np.allclose(
        np.asarray(painted.data)[np.asarray(layer.data) == label], res[:, gene].X[cell]
    )


@pytest.mark.skipif(
    not (DATA / "cosmx_lung" / "CellLabels_F003.tif").exists(), reason="cosmx_lung data not present"
)
def test_cosmx_offsets_and_fit_agree():
    import anndata as ad

    from napari_spatial_impute.viz.image_link import (
        alignment_from_offset,
        fit_alignment,
        label_ids_from_names,
        load_label_image,
        read_fov_positions,
    )

    spa = ad.read_h5ad(DATA / "cosmx_lung" / "spatial.h5ad")
    pos = read_fov_positions(DATA / "cosmx_lung" / "Lung12_fov_positions_file.csv")
    labels = load_label_image(DATA / "cosmx_lung" / "CellLabels_F003.tif")
    m = (spa.obs["fov"].astype(str) == "3").to_numpy()
    fit = fit_alignment(labels, to_napari(spa, ndim=2)[m], label_ids_from_names(spa.obs_names[m]))
    assert fit.rms < 15  # centroids are mean transcript positions, not mask centroids
    assert fit.scale[0] < 0 < fit.scale[1]  # CosMx global y points up
    # the offsets file with a flip by the full CosMx FOV height (3648 px) gives the same placement
    off = alignment_from_offset(pos.loc["3", "x"], pos.loc["3", "y"], 3648, flip_y=True)
    corners = np.array([[0, 0], [600, 600]])
    assert np.allclose(off.to_world(corners), fit.to_world(corners), atol=15)


@pytest.mark.skipif(
    not (DATA / "cosmx_lung" / "CellLabels_F002.tif").exists(), reason="cosmx_lung data not present"
)
def test_cosmx_two_fovs_before_mapping(make_napari_viewer_proxy, qtbot):
    """Label images align with the spatial data alone (no result yet), one per FOV."""
    import anndata as ad

    spa = ad.read_h5ad(DATA / "cosmx_lung" / "spatial.h5ad")
    viewer = make_napari_viewer_proxy()
    model = get_model(viewer)
    model.set_spatial(spa)
    model.set_keys(fov_key="fov")
    w = ImageWidget(viewer)
    qtbot.addWidget(w)
    assert [w.fov_combo.itemText(i) for i in range(w.fov_combo.count())] == ["2", "3"]
    assert not w.paint_button.isEnabled()
    layers = [w.open_labels(DATA / "cosmx_lung" / f"CellLabels_F00{f}.tif") for f in (2, 3)]
    assert [plugin_meta(lay)["fov"] for lay in layers] == ["2", "3"]
    for lay, f in zip(layers, ("2", "3"), strict=True):
        assert lay.scale[0] < 0 < lay.scale[1]  # y flipped
        m = (spa.obs["fov"].astype(str) == f).to_numpy()
        yx = to_napari(spa, ndim=2)[m]
        ids = [int(n.split("_c")[1]) for n in spa.obs_names[m]]
        hits = [lay.get_value(tuple(p), world=True) for p in yx]
        assert (
            np.mean(np.asarray(hits) == np.asarray(ids)) > 0.8
        )  # most centroids on their own cell
    # the FOV offsets file places FOV 3 where the fit does (flip by the full 3648-px FOV height)
    w.labels_combo.setCurrentText(layers[1].name)
    fitted = (tuple(layers[1].scale), tuple(layers[1].translate))
    w.mode_combo.setCurrentText("FOV offsets file")
    w.positions_edit.setText(str(DATA / "cosmx_lung" / "Lung12_fov_positions_file.csv"))
    w.flip_check.setChecked(True)
    w.height_spin.setValue(3648)
    w.align()
    assert np.allclose(layers[1].translate, fitted[1], atol=15)
    assert np.allclose(layers[1].scale, fitted[0], atol=0.01)


@pytest.mark.skipif(
    __import__("os").environ.get("QT_QPA_PLATFORM") == "offscreen",
    reason="needs a real (Xvfb) display",
)
def test_painted_image_renders(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    model = load_into(viewer)
    labels, rows = _synthetic_labels(model.result, "2")
    path = tmp_path / "labels_fov2.tif"
    tifffile.imwrite(path, labels)
    w = ImageWidget(viewer)
    qtbot.addWidget(w)
    layer = w.open_labels(path)
    layer.visible = False
    w.paint("Gad1", "imputed")
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    coloured = np.abs(shot - shot.mean(-1, keepdims=True)).max(-1) > 30
    assert coloured.sum() > 500  # viridis-coloured cells, not a blank canvas
