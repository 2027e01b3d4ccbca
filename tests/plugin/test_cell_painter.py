"""A store's cells coloured in their own masks by what the Explore widget shows (shown_changed)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from _data import make_shapes_store, make_store
from napari_spatial_impute.plugin import cell_shapes as painter_mod
from napari_spatial_impute.plugin.cell_shapes import connect_cell_painter
from napari_spatial_impute.plugin.model import ShownValues
from napari_spatial_impute.plugin.sync import connect_model
from napari_spatial_impute.viz.cell_shapes import (
    CELL_LABELS_KIND,
    CELL_SHAPES_KIND,
    CELL_VALUES_KIND,
    HIDDEN_FOR_MASKS,
    LookupArray,
)
from napari_spatial_impute.viz.layers import plugin_meta

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path, _ = make_store(tmp_path_factory.mktemp("cells") / "cells.zarr", n_fovs=3)
    return path


def _shown(n, seed=0, name="g0"):
    rng = np.random.default_rng(seed)
    rgba = rng.random((n, 4)).astype(np.float32)
    rgba[:, 3] = 1.0
    return ShownValues("imputed", name, rng.random(n).astype(np.float32), rgba, (0.0, 1.0), "magma")


def _open(viewer, path):
    viewer.open(str(path), plugin="napari-spatial-impute")
    return connect_model(viewer)


def _of_kind(viewer, kind):
    return [layer for layer in viewer.layers if plugin_meta(layer).get("kind") == kind]


def _show(qtbot, viewer, model, shown):
    painter = connect_cell_painter(viewer)
    before = painter.applied
    model.set_shown(shown)
    qtbot.waitUntil(lambda: painter.applied > before, timeout=30_000)
    return painter


def _colour_of(image, value):
    """The colour napari gives a value of the values image (its colormap over its limits)."""
    lo, hi = image.contrast_limits
    return np.asarray(image.colormap.map(np.array([(value - lo) / (hi - lo)], np.float32)))[0]


def _colour_at(viewer, world_yx):
    """The cell's label key and the colour its pixel is drawn with, read through the layers."""
    (cells,) = _of_kind(viewer, CELL_LABELS_KIND)
    (image,) = _of_kind(viewer, CELL_VALUES_KIND)
    key = cells.get_value(tuple(world_yx), world=True)
    data = image.data[0] if image.multiscale else image.data
    pixel = np.round(image.world_to_data(tuple(world_yx))).astype(int)
    value = data[tuple(pixel)]
    # the label layer's colours are all transparent: the values image alone colours the cells
    assert cells.colormap.map(np.array([key], dtype=np.int64))[0][3] == 0
    return key, _colour_of(image, float(value))


def test_each_cell_gets_exactly_its_rows_colour_and_others_stay_clear(
    store, make_napari_viewer_proxy, qtbot
):
    viewer = make_napari_viewer_proxy()
    model = _open(viewer, store)
    spatial = model.spatial
    keep = np.arange(spatial.n_obs) % 3 != 0  # a third of the cells are not in the result
    result = spatial[keep].copy()
    model.set_result(result)
    shown = _shown(result.n_obs)
    _show(qtbot, viewer, model, shown)
    (cells,) = _of_kind(viewer, CELL_LABELS_KIND)
    (outlines,) = _of_kind(viewer, "labels")
    assert viewer.layers.index(cells) == viewer.layers.index(outlines) - 1  # outlines on top
    world = spatial.obsm["spatial"][:, ::-1]
    rows = np.cumsum(keep) - 1
    for i, yx in enumerate(world):
        key, colour = _colour_at(viewer, yx)
        assert key > 0
        if keep[i]:
            np.testing.assert_array_equal(colour, shown.rgba[rows[i]])
        else:
            np.testing.assert_array_equal(colour, [0, 0, 0, 0])
    # two FOVs' cells with the same id get their own colours
    same_id = np.flatnonzero(result.obs["cell_ID"].to_numpy() == 2)
    assert len({_colour_at(viewer, world[np.flatnonzero(keep)[r]])[0] for r in same_id}) == 3
    (image,) = _of_kind(viewer, CELL_VALUES_KIND)
    assert viewer.layers.index(image) == viewer.layers.index(cells) - 1
    assert viewer.layers.selection.active.name == cells.name  # the hover reads its table


def test_hover_on_a_mask_reads_the_cells_value_fov_and_id(store, make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    model = _open(viewer, store)
    model.set_result(model.spatial)
    shown = _shown(model.spatial.n_obs)
    _show(qtbot, viewer, model, shown)
    (cells,) = _of_kind(viewer, CELL_LABELS_KIND)
    row = 30  # FOV 1, cell 7
    status = cells.get_status(tuple(model.spatial.obsm["spatial"][row, ::-1]), world=True)
    text = status["coordinates"]
    assert f"g0: {shown.values[row]:.3g}"[:8] in text
    assert "fov: fov1" in text and "cell_ID: 7" in text


def test_the_latest_shown_value_wins_and_the_work_is_off_the_main_thread(
    store, make_napari_viewer_proxy, qtbot, monkeypatch
):
    viewer = make_napari_viewer_proxy()
    model = _open(viewer, store)
    model.set_result(model.spatial)
    threads = []
    real = painter_mod.value_colours

    def spy(*args):
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(painter_mod, "value_colours", spy)
    painter = connect_cell_painter(viewer)
    first, second = _shown(model.spatial.n_obs, 1), _shown(model.spatial.n_obs, 2, "g1")
    model.set_shown(first)
    model.set_shown(second)  # before the first worker's colours reach the main thread
    qtbot.waitUntil(lambda: painter.applied == 1, timeout=30_000)
    qtbot.waitUntil(lambda: not painter.worker.is_running, timeout=30_000)
    qtbot.wait(50)
    assert painter.applied == 1  # the first one's colours were dropped
    (cells,) = _of_kind(viewer, CELL_LABELS_KIND)
    _, colour = _colour_at(viewer, model.spatial.obsm["spatial"][5, ::-1])
    np.testing.assert_array_equal(colour, second.rgba[5])
    assert threads and threading.main_thread() not in threads
    # showing nothing hides the coloured cells; the next value shows them again, same layer
    (image,) = _of_kind(viewer, CELL_VALUES_KIND)
    model.set_shown(None)
    assert not cells.visible and not image.visible
    _show(qtbot, viewer, model, first)
    assert cells.visible and _of_kind(viewer, CELL_LABELS_KIND) == [cells]
    assert image.visible and _of_kind(viewer, CELL_VALUES_KIND) == [image]


def test_a_switch_swaps_the_lookup_reads_no_label_pixels_again_and_keeps_no_per_cell_table(
    store, make_napari_viewer_proxy, qtbot
):
    # a DirectLabelColormap of one entry per cell took seconds of per-label Python work a
    # switch at 10^5 cells: the colours are now a lookup swapped under the same image
    viewer = make_napari_viewer_proxy()
    model = _open(viewer, store)
    model.set_result(model.spatial)
    n = model.spatial.n_obs
    _show(qtbot, viewer, model, _shown(n, 1))
    (cells,) = _of_kind(viewer, CELL_LABELS_KIND)
    (image,) = _of_kind(viewer, CELL_VALUES_KIND)
    views = list(image.data) if image.multiscale else [image.data]
    assert all(isinstance(v, LookupArray) for v in views)
    reads = [v.reads for v in views]
    assert sum(reads) > 0  # napari read the view through the lookup
    second = _shown(n, 2, "g1")
    _show(qtbot, viewer, model, second)
    assert _of_kind(viewer, CELL_VALUES_KIND) == [image]
    assert [v.reads for v in views] == reads  # the same view again: its label pixels kept
    assert len(cells.colormap.color_dict) <= 2  # default and background: no per-cell table
    for row in (0, n // 2, n - 1):
        _, colour = _colour_at(viewer, model.spatial.obsm["spatial"][row, ::-1])
        np.testing.assert_array_equal(colour, second.rgba[row])


def test_a_result_not_from_a_store_colours_nothing(make_napari_viewer_proxy, qtbot):
    from _data import make_synthetic

    viewer = make_napari_viewer_proxy()
    model = connect_model(viewer)
    _, spatial = make_synthetic(n_ref=20, n_sp=30, seed=0)
    model.set_result(spatial)
    model.set_shown(_shown(spatial.n_obs))
    painter = connect_cell_painter(viewer)
    assert painter.worker is None and not _of_kind(viewer, CELL_LABELS_KIND)


def test_polygons_of_a_shapes_store_are_coloured(tmp_path, make_napari_viewer_proxy, qtbot):
    path = make_shapes_store(tmp_path, "polygons")
    viewer = make_napari_viewer_proxy()
    model = _open(viewer, path)
    model.set_result(model.spatial)
    shown = _shown(model.spatial.n_obs)
    _show(qtbot, viewer, model, shown)
    (shapes,) = _of_kind(viewer, CELL_SHAPES_KIND)
    assert type(shapes).__name__ == "Shapes" and len(shapes.data) == 4
    np.testing.assert_array_equal(shapes.face_color[0], [0, 0, 0, 0])  # cell 100: no row
    np.testing.assert_allclose(shapes.face_color[1:], shown.rgba[[2, 1, 0]])
    points = [lay for lay in viewer.layers if type(lay).__name__ == "Points"]
    assert viewer.layers.index(shapes) < min(viewer.layers.index(p) for p in points)


def test_too_many_polygons_are_said_once(tmp_path, make_napari_viewer_proxy, qtbot, monkeypatch):
    """Above MAX_POLYGONS the cells stay points: the reason was stored but never shown."""
    import napari_spatial_impute.viz.cell_shapes as shapes_mod

    said: list[str] = []
    monkeypatch.setattr(shapes_mod, "MAX_POLYGONS", 2)
    monkeypatch.setattr(painter_mod, "show_info", said.append)
    path = make_shapes_store(tmp_path, "polygons")
    viewer = make_napari_viewer_proxy()
    model = _open(viewer, path)
    model.set_result(model.spatial)
    _show(qtbot, viewer, model, _shown(model.spatial.n_obs))
    _show(qtbot, viewer, model, _shown(model.spatial.n_obs))  # another gene: not said again
    assert not _of_kind(viewer, CELL_SHAPES_KIND)
    assert len(said) == 1 and "polygons (over 2)" in said[0] and "stay points" in said[0]


def test_real_cosmx_labels_coloured_by_a_gene(
    shared_data, tmp_path, make_napari_viewer_proxy, qtbot
):
    from napari_spatial_impute.io.demo_stores import build_cosmx_lung_store

    path = build_cosmx_lung_store(shared_data, tmp_path / "lung.zarr")
    viewer = make_napari_viewer_proxy()
    model = _open(viewer, path)
    spatial = model.spatial
    model.set_result(spatial)
    gene = list(spatial.var_names).index("COL1A1")
    values = np.asarray(spatial.X[:, gene].todense()).ravel().astype(np.float32)
    rgba = np.zeros((spatial.n_obs, 4), np.float32)
    rgba[:, 0] = values / max(values.max(), 1)
    rgba[:, 3] = 1
    _show(qtbot, viewer, model, ShownValues("measured", "COL1A1", values, rgba, (0, 1), "magma"))
    (cells,) = _of_kind(viewer, CELL_LABELS_KIND)
    (image,) = _of_kind(viewer, CELL_VALUES_KIND)
    data = cells.data[0] if cells.multiscale else cells.data
    shown_px = np.asarray((image.data[0] if image.multiscale else image.data)[...])
    offsets = plugin_meta(cells)["id_offsets"]
    elements = plugin_meta(cells)["elements"]
    # every pixel of every cell of the table: its key, and the colour it is drawn in, exactly
    regions = spatial.obs["fov_labels"].astype(str).to_numpy()
    ids = spatial.obs["cell_ID"].to_numpy()
    whole = np.asarray(data[...])
    for k, element in enumerate(elements):
        oy, ox = data.origins[k]
        tile = np.asarray(data.tiles[k])
        drawn = whole[oy : oy + tile.shape[0], ox : ox + tile.shape[1]]
        values = shown_px[oy : oy + tile.shape[0], ox : ox + tile.shape[1]]
        for row in np.flatnonzero(regions == element)[:25]:
            key = int(ids[row]) + (offsets[k] if offsets else 0)
            assert (drawn[tile == ids[row]] == key).all()
            cell_values = np.unique(values[drawn == key])
            assert len(cell_values) == 1  # one value over the whole mask
            np.testing.assert_array_equal(_colour_of(image, cell_values[0]), rgba[row])


def test_label_lookups_are_compiled_in_a_worker_once_when_a_store_opens(
    store, make_napari_viewer_proxy, qtbot, monkeypatch
):
    calls = []
    monkeypatch.setattr(painter_mod, "_WARMED", False)
    monkeypatch.setattr(painter_mod, "_warm_up", lambda: calls.append(threading.current_thread()))
    viewer = make_napari_viewer_proxy()
    connect_model(viewer)
    painter = connect_cell_painter(viewer)
    assert painter.warm_thread is None  # nothing started without a store
    _open(viewer, store)
    qtbot.waitUntil(lambda: len(calls) == 1, timeout=30_000)
    _open(viewer, store)  # a second store's labels: compiled already
    painter.warm_thread.join(30)
    assert not painter.warm_thread.is_alive()
    assert len(calls) == 1 and calls[0] is not threading.main_thread()


def test_zoomed_in_the_masks_replace_the_points_and_zoomed_out_the_points_return(
    store, make_napari_viewer_proxy, qtbot
):
    from napari_spatial_impute.plugin.cell_shapes import _camera

    viewer = make_napari_viewer_proxy()
    model = _open(viewer, store)
    model.set_result(model.spatial)
    (cells_points,) = [lay for lay in viewer.layers if type(lay).__name__ == "Points"]
    other = viewer.add_points(np.zeros((1, 2)), name="mine")  # not the cells: left alone
    camera = _camera(viewer)
    camera.zoom = 100.0
    assert cells_points.visible  # nothing coloured yet: the points stay
    _show(qtbot, viewer, model, _shown(model.spatial.n_obs))
    assert not cells_points.visible and other.visible
    assert plugin_meta(cells_points).get(HIDDEN_FOR_MASKS)  # still shown, as masks
    camera.zoom = 0.01
    assert cells_points.visible and not plugin_meta(cells_points).get(HIDDEN_FOR_MASKS)
    cells_points.visible = False  # the user hides them: zooming does not bring them back
    camera.zoom = 100.0
    camera.zoom = 0.01
    assert not cells_points.visible
    cells_points.visible = True
    camera.zoom = 100.0
    assert not cells_points.visible
    viewer.grid.enabled = True  # side by side the masks are a grid cell of their own
    assert cells_points.visible
    viewer.grid.enabled = False
    assert not cells_points.visible
    model.set_shown(None)  # nothing shown in the masks: the points return at any zoom
    assert cells_points.visible
