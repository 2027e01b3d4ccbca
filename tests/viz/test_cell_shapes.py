"""Result rows matched to a store's labels (unique keys across per-FOV tiles) and shapes."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from _data import make_shapes_store, make_store
from napari_spatial_impute.io.sdata import open_store, read_spatial
from napari_spatial_impute.viz.cell_shapes import (
    INDEX_COLUMN,
    MAX_POLYGONS,
    CellShapes,
    LookupArray,
    cell_ids,
    cell_labels_layer,
    colour_table,
    key_lookup,
    label_keys,
    shape_colours,
    shape_layer,
    shown_features,
    tile_id_offsets,
    value_colours,
)
from napari_spatial_impute.viz.layers import META_KEY
from napari_spatial_impute.viz.rasters import raster_layers

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path, _ = make_store(tmp_path_factory.mktemp("cells") / "cells.zarr", n_fovs=3)
    return path


def _labels_tuple(path):
    (lab,) = [
        ld for ld in raster_layers(open_store(path), "global", store=str(path)) if ld[2] == "labels"
    ]
    return lab


def _rgba(n, seed=0):
    rgba = np.random.default_rng(seed).random((n, 4)).astype(np.float32)
    rgba[:, 3] = 1.0
    return rgba


def test_tile_offsets_keep_every_id_of_a_tile_in_its_own_range():
    offsets, dtype = tile_id_offsets(3, np.uint16)
    assert offsets.tolist() == [0, 65536, 131072] and dtype == np.uint32
    offsets, dtype = tile_id_offsets(500, np.uint32)
    assert offsets[1] == 2**32 and dtype == np.int64
    assert offsets[-1] + np.iinfo(np.uint32).max <= np.iinfo(np.int64).max


def test_each_cell_reads_its_own_key_through_napari_and_ids_repeat_across_fovs(store):
    """The ids 1..24 repeat in every FOV; the cell labels layer's keys are unique per cell."""
    data, kwargs, _ = _labels_tuple(store)
    cells = cell_labels_layer(data, kwargs["metadata"][META_KEY], "cells")
    meta = cells[1]["metadata"][META_KEY]
    assert meta["elements"] == ["fov0_labels", "fov1_labels", "fov2_labels"]
    result = read_spatial(store)
    ids = cell_ids(result)
    assert ids is not None and len(set(ids.instances.tolist())) == 24  # repeated
    keys = label_keys(ids, meta["elements"], meta["id_offsets"])
    assert len(np.unique(keys)) == result.n_obs and (keys > 0).all()
    layer = Labels(cells[0], affine=kwargs["affine"], **cells[1])
    got = [layer.get_value((y, x), world=True) for x, y in result.obsm["spatial"]]
    np.testing.assert_array_equal(got, keys)
    # the store's own layer still reads the element's ids (unchanged)
    plain = Labels(data, affine=kwargs["affine"])
    got = [plain.get_value((y, x), world=True) for x, y in result.obsm["spatial"]]
    np.testing.assert_array_equal(got, ids.instances)


def test_colour_table_has_one_colour_per_drawn_cell_and_skips_the_others(store):
    data, kwargs, _ = _labels_tuple(store)
    meta = cell_labels_layer(data, kwargs["metadata"][META_KEY], "c")[1]["metadata"][META_KEY]
    result = read_spatial(store)[::2].copy()  # every other cell left out of the result
    keys = label_keys(cell_ids(result), meta["elements"], meta["id_offsets"])
    keys[3] = 0  # a row of another layer
    rgba = _rgba(result.n_obs)
    k, colours = colour_table(keys, rgba)
    assert len(k) == result.n_obs - 1 and 0 not in k
    lookup = dict(zip(k.tolist(), colours, strict=True))
    for row in np.flatnonzero(keys):
        np.testing.assert_array_equal(lookup[int(keys[row])], rgba[row])


@pytest.mark.parametrize("shift", [0, 1 << 32])  # one image; per-FOV ids shifted by 2**32
def test_key_lookup_gives_each_key_its_last_rows_value_and_nan_elsewhere(shift):
    keys = np.array([3, 0, 5, 3, 9], dtype=np.int64)
    keys[keys > 0] += shift
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0], dtype=np.float32)
    lookup = key_lookup(keys, values)
    assert (lookup.keys is None) == (shift == 0)  # a dense vector when the keys are small
    pixels = np.array([[0, 3 + shift, 5 + shift], [9 + shift, 4 + shift, 10**12]], np.int64)
    got = lookup(pixels)
    assert got.dtype == np.float32 and got.shape == pixels.shape
    np.testing.assert_array_equal(got, [[np.nan, 4.0, 3.0], [5.0, np.nan, np.nan]])


def _napari_colours(colours, pixel_values):
    """What napari draws for image values: its step colormap over the contrast limits."""
    from napari.utils.colormaps import Colormap

    cmap = Colormap(colours.colors, controls=colours.controls, interpolation="zero")
    lo, hi = colours.limits
    return cmap.map((np.asarray(pixel_values, np.float32) - lo) / (hi - lo))


def test_values_drawn_through_a_step_colormap_get_exactly_their_rows_colours():
    from napari_spatial_impute.viz.explore import colorize

    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 1.0, 5000).astype(np.float32)
    values[::7] = np.nan
    rgba = colorize(values, "magma", (0.5, 4.0))  # a 256-colour lookup, clipped, NaN clear
    colours = value_colours(values, rgba)
    assert colours.by_value  # the image holds the values: a hover reads them
    assert len(colours.colors) <= 256
    np.testing.assert_array_equal(colours.values, values)
    np.testing.assert_array_equal(_napari_colours(colours, colours.values), rgba)
    # categories by code (-1: none, clear)
    codes = rng.integers(-1, 4, 300).astype(np.float32)
    palette = rng.random((4, 4)).astype(np.float32)
    cat_rgba = np.where(codes[:, None] >= 0, palette[codes.astype(int)], 0).astype(np.float32)
    cats = value_colours(codes, cat_rgba)
    assert cats.by_value
    np.testing.assert_array_equal(_napari_colours(cats, cats.values), cat_rgba)


def test_one_colour_for_every_cell_is_two_bins_for_the_gpu():
    values = np.array([1.0, 2.0, np.nan], dtype=np.float32)
    rgba = np.array([[1, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 0]], dtype=np.float32)
    colours = value_colours(values, rgba)
    assert len(colours.colors) == 2 == len(colours.controls) - 1  # vispy's step map asserts 2
    np.testing.assert_array_equal(_napari_colours(colours, colours.values), rgba)


@pytest.mark.parametrize("case", ["one value two colours", "coloured nan"])
def test_colours_not_a_function_of_the_value_are_drawn_by_index_exactly(case):
    values = np.array([1.0, 1.0, 2.0, np.nan], dtype=np.float32)
    rgba = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=np.float32)
    if case == "one value two colours":  # e.g. wide intervals greyed out
        pass
    else:
        values[1] = 5.0
        rgba[3] = [0.5, 0.5, 0.5, 1.0]
    colours = value_colours(values, rgba)
    assert not colours.by_value
    np.testing.assert_array_equal(_napari_colours(colours, colours.values), rgba)
    assert _napari_colours(colours, [np.nan])[0][3] == 0  # background stays clear


def test_lookup_array_maps_label_pixels_lazily_and_a_new_lookup_reuses_them():
    labels = np.arange(24, dtype=np.uint32).reshape(4, 6) % 5
    keys = np.arange(5, dtype=np.int64)
    view = LookupArray(labels, key_lookup(keys, keys * 10.0))
    assert view.shape == labels.shape and view.dtype == np.float32 and view.reads == 0
    window = (slice(1, 3), slice(0, 6))
    np.testing.assert_array_equal(
        view[window], np.where(labels[window] > 0, labels[window] * 10.0, np.nan)
    )
    view.lookup = key_lookup(keys, keys * -1.0)  # a gene switch
    np.testing.assert_array_equal(
        view[window], np.where(labels[window] > 0, -1.0 * labels[window], np.nan)
    )
    assert view.reads == 1  # the same window: its label pixels were kept
    view[0, 0]
    view[window]  # the most recent again
    view[...]  # a third window: (0, 0), the least recent, goes
    view[window]
    assert view.reads == 3
    view[0, 0]
    assert view.reads == 4  # two windows kept at most


def test_hover_table_is_indexed_by_label_value(store):
    result = read_spatial(store)
    keys = np.arange(result.n_obs, dtype=np.int64) + 10
    keys[0] = 0
    values = np.linspace(0, 1, result.n_obs).astype(np.float32)
    df = shown_features(
        result, keys, "imputed", "Gad1", values, instance=("cell_ID", result.obs["cell_ID"])
    )
    assert df[INDEX_COLUMN].tolist() == keys[1:].tolist()
    np.testing.assert_allclose(df["Gad1"], values[1:])
    assert df["cell_ID"].tolist() == result.obs["cell_ID"].tolist()[1:]
    assert df["fov"].astype(str).tolist() == result.obs["fov"].astype(str).tolist()[1:]
    cats = shown_features(result, keys, "predicted", "", np.zeros(result.n_obs), ("T0", "T1"))
    assert set(cats["most likely cluster"].astype(str)) == {"T0"}


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("kind", ["polygons", "circles"])
def test_shapes_in_the_coordinate_system_with_their_rows(tmp_path, kind):
    path = make_shapes_store(tmp_path, kind)
    result = read_spatial(path)
    got = shape_layer(open_store(path), cell_ids(result), ["cells"], "cells")
    assert isinstance(got, CellShapes)
    data, kwargs, layer_type = got.layer
    # shape j is cell 100 + j; the result has cells 103, 102, 101 in rows 0, 1, 2
    np.testing.assert_array_equal(got.rows, [-1, 2, 1, 0])
    if kind == "polygons":
        assert layer_type == "shapes" and kwargs["shape_type"] == "polygon"
        np.testing.assert_allclose(data[2], [[0, 40], [0, 48], [6, 48]])  # (y, x), scaled by 2
    else:
        assert layer_type == "points"
        np.testing.assert_allclose(data[2], [10, 40])
        np.testing.assert_allclose(kwargs["size"], 2 * 2 * (np.arange(4) + 1.0))
    rgba = _rgba(result.n_obs)
    faces = shape_colours(got.rows, rgba)
    np.testing.assert_array_equal(faces[0], [0, 0, 0, 0])
    np.testing.assert_array_equal(faces[1:], rgba[[2, 1, 0]])


def test_too_many_polygons_stay_points_with_a_reason(tmp_path, monkeypatch):
    from napari_spatial_impute.viz import cell_shapes

    path = make_shapes_store(tmp_path, "polygons")
    monkeypatch.setattr(cell_shapes, "MAX_POLYGONS", 2)
    got = shape_layer(open_store(path), cell_ids(read_spatial(path)), ["cells"], "cells")
    assert isinstance(got, str) and "4 polygons" in got and "\n" not in got
    assert MAX_POLYGONS > 2
