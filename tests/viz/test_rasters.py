"""SpatialData images and labels as napari layers that line up with cells in one coordinate system."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import spatialdata as sd
from hypothesis import given, settings
from hypothesis import strategies as st
from napari.layers import Image, Labels
from spatialdata.models import Image2DModel, Labels2DModel
from spatialdata.transformations import Affine, Identity, Scale, Sequence, Translation

from napari_spatial_impute.viz.layers import META_KEY
from napari_spatial_impute.viz.rasters import (
    MAX_LAYERS_PER_KIND,
    MosaicArray,
    mosaic_pyramid,
    raster_affine,
    raster_layers,
    style_raster_layer,
)

CS = "global"


# --------------------------------------------------------------------------- helpers
def _unique_labels(h: int, w: int, seed: int = 0, start: int = 1) -> np.ndarray:
    """Every pixel its own label: any half-pixel error reads a neighbour's label."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(h * w) + start).reshape(h, w).astype(np.int32)


def _rotation(deg: float, scale: float = 1.0, shift=(0.0, 0.0)) -> Affine:
    a = np.deg2rad(deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    m = np.array([[c, -s, shift[0]], [s, c, shift[1]], [0, 0, 1]])
    return Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))


def _flip_y(height: float) -> Affine:
    m = np.array([[1.0, 0, 0], [0, -1.0, height], [0, 0, 1]])
    return Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))


TRANSFORMS = {
    "identity": Identity(),
    "translation": Translation([3.25, -7.5], axes=("x", "y")),
    "scale": Scale([0.5, 2.0], axes=("x", "y")),
    "y-flip": _flip_y(40.0),
    "rotation": _rotation(30.0, 1.7, (5.0, -2.0)),
    "sequence": Sequence(
        [Scale([0.3, 0.3], axes=("x", "y")), Translation([1, 2], axes=("x", "y"))]
    ),
}


def _matrix(transform) -> np.ndarray:
    """A spatialdata transformation as a 3x3 (y, x) matrix (the truth the layers must match)."""
    return np.asarray(transform.to_affine_matrix(("y", "x"), ("y", "x")), dtype=np.float64)


def _cells_in(matrix: np.ndarray, shape: tuple[int, int], n: int = 300, seed: int = 1):
    """Random cell centroids in the cs ``(y, x)`` inside an element, and the pixel under each."""
    rng = np.random.default_rng(seed)
    intrinsic = rng.uniform([0, 0], shape, size=(n, 2))  # (y, x), pixel i covers [i, i+1)
    cs = (matrix[:2, :2] @ intrinsic.T).T + matrix[:2, 2]
    return cs, np.floor(intrinsic).astype(int)


def _read_at(layer, level0, points: np.ndarray) -> np.ndarray:
    """The value under each cs point: ``layer.world_to_data`` then indexing (as the plugin does)."""
    out = []
    for p in points:
        idx = np.round(np.asarray(layer.world_to_data(p))).astype(int)
        out.append(np.asarray(level0[tuple(idx)]))
    return np.array(out)


def _layer(ld):
    data, kwargs, kind = ld
    return (Labels if kind == "labels" else Image)(data, **kwargs)


def _labels_sdata(arr, transform, name="cells", scale_factors=None) -> sd.SpatialData:
    el = Labels2DModel.parse(
        arr, dims=("y", "x"), transformations={CS: transform}, scale_factors=scale_factors
    )
    return sd.SpatialData(labels={name: el})


# --------------------------------------------------------------------------- pixel alignment
@pytest.mark.parametrize("tname", list(TRANSFORMS))
def test_cells_read_their_label_single_scale(tname):
    arr = _unique_labels(40, 30)
    sdata = _labels_sdata(arr, TRANSFORMS[tname])
    (ld,) = raster_layers(sdata, CS)
    data, kwargs, kind = ld
    assert kind == "labels" and isinstance(data, da.Array) and not kwargs["multiscale"]
    layer = _layer(ld)
    cs, pix = _cells_in(_matrix(TRANSFORMS[tname]), arr.shape)
    np.testing.assert_array_equal(_read_at(layer, data, cs), arr[pix[:, 0], pix[:, 1]])


def test_raster_affine_is_the_transformation_plus_half_a_pixel():
    el = Labels2DModel.parse(
        np.zeros((4, 6), np.int32), dims=("y", "x"), transformations={CS: TRANSFORMS["scale"]}
    )
    # Scale x by 0.5, y by 2 (given in (x, y)): napari (y, x) order is diag(2, 0.5)
    expected = np.array([[2.0, 0, 1.0], [0, 0.5, 0.25], [0, 0, 1]])
    np.testing.assert_allclose(raster_affine(el, CS), expected)


@pytest.mark.parametrize("tname", ["y-flip", "rotation"])
def test_cells_read_their_label_multiscale(tname):
    arr = _unique_labels(64, 48, seed=3)
    sdata = _labels_sdata(arr, TRANSFORMS[tname], scale_factors=[2, 2])
    (ld,) = raster_layers(sdata, CS)
    data, kwargs, _ = ld
    assert kwargs["multiscale"] and len(data) == 3
    assert all(isinstance(level, da.Array) for level in data)
    assert [level.shape for level in data] == [(64, 48), (32, 24), (16, 12)]
    cs, pix = _cells_in(_matrix(TRANSFORMS[tname]), arr.shape, seed=4)
    np.testing.assert_array_equal(_read_at(_layer(ld), data[0], cs), arr[pix[:, 0], pix[:, 1]])


# --------------------------------------------------------------------------- mosaics
def _tile_grid(ny=3, nx=4, h=10, w=12, step=(9, 11)):
    """Unique-label tiles on a grid overlapping by one pixel, their pixel origins, a stitch."""
    tiles, origins = [], []
    for i in range(ny):
        for j in range(nx):
            k = len(tiles)
            tiles.append(_unique_labels(h, w, seed=k, start=1 + k * h * w))
            origins.append((i * step[0], j * step[1]))
    origins = np.array(origins)
    stitch = _stitch(tiles, origins)
    return tiles, origins, stitch


def _stitch(tiles, origins, yx=(0, 1)) -> np.ndarray:
    """The numpy reference: tiles pasted in order (later wins), zeros elsewhere."""
    sizes = np.array([[t.shape[yx[0]], t.shape[yx[1]]] for t in tiles])
    ext = (np.asarray(origins) + sizes).max(axis=0)
    shape = list(tiles[0].shape)
    shape[yx[0]], shape[yx[1]] = ext
    out = np.zeros(shape, tiles[0].dtype)
    for t, (oy, ox) in zip(tiles, origins, strict=True):
        key = [slice(None)] * len(shape)
        key[yx[0]] = slice(oy, oy + t.shape[yx[0]])
        key[yx[1]] = slice(ox, ox + t.shape[yx[1]])
        out[tuple(key)] = t
    return out


def _tile_sdata(tiles, origins, shared) -> sd.SpatialData:
    """Per-FOV labels: each translated by its pixel origin, then one shared linear map."""
    labels = {}
    for k, (t, (oy, ox)) in enumerate(zip(tiles, origins, strict=True)):
        tr = Sequence([Translation([float(ox), float(oy)], axes=("x", "y")), shared])
        labels[f"fov{k}_labels"] = Labels2DModel.parse(t, dims=("y", "x"), transformations={CS: tr})
    return sd.SpatialData(labels=labels)


def test_translated_tiles_become_one_mosaic_layer_that_lines_up():
    tiles, origins, stitch = _tile_grid()
    shared = _rotation(30.0, 0.7)
    sdata = _tile_sdata(tiles, origins + [5, -3], shared)
    (ld,) = raster_layers(sdata, CS, store="x.zarr")
    data, kwargs, kind = ld
    assert kind == "labels" and isinstance(data, MosaicArray)
    assert kwargs["name"] == "labels (12 FOVs)"
    meta = kwargs["metadata"][META_KEY]
    assert meta["elements"] == [f"fov{k}_labels" for k in range(12)]
    assert meta["store"] == "x.zarr" and meta["coordinate_system"] == CS
    np.testing.assert_array_equal(data[...], stitch)
    np.testing.assert_array_equal(data[3:17, 20:31], stitch[3:17, 20:31])
    # cells anywhere in the tiles read the label of the tile drawn on top there
    m = np.eye(3)
    m[:2, :2] = _matrix(shared)[:2, :2]
    m[:2, 2] = m[:2, :2] @ np.array([5.0, -3.0])
    cs, pix = _cells_in(m, stitch.shape, n=400, seed=7)
    np.testing.assert_array_equal(_read_at(_layer(ld), data, cs), stitch[pix[:, 0], pix[:, 1]])


def test_reading_a_window_touches_only_the_overlapping_tiles():
    tiles, origins, stitch = _tile_grid()
    sdata = _tile_sdata(tiles, origins, Identity())
    data = raster_layers(sdata, CS)[0][0]
    data.reads = 0
    np.testing.assert_array_equal(data[2:6, 2:8], stitch[2:6, 2:8])  # inside tile 0 only
    assert data.reads == 1
    data.reads = 0
    np.testing.assert_array_equal(data[8:10, 10:12], stitch[8:10, 10:12])  # a 4-tile corner
    assert data.reads == 4
    data.reads = 0
    assert data[25, 40] == stitch[25, 40]
    assert data.reads == 1


class _Counted:
    """A numpy tile that records the keys it is read with."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr, self.keys = arr, []
        self.shape, self.dtype = arr.shape, arr.dtype

    def __getitem__(self, key):
        self.keys.append(key)
        return self.arr[key]


def test_pyramid_levels_are_strided_padded_and_the_coarsest_is_cached(monkeypatch):
    import napari_spatial_impute.viz.rasters as rasters

    monkeypatch.setattr(rasters, "PYRAMID_MAX_SIZE", 8)
    tiles, origins, stitch = _tile_grid()
    counted = [_Counted(t) for t in tiles]
    levels = mosaic_pyramid(counted, origins, yx=(0, 1))
    # 28 x 45 px: levels of factor 1, 4, 16; padded to multiples of 16 (exact napari factors)
    assert [lv.shape for lv in levels] == [(32, 48), (8, 12), (2, 3)]
    padded = np.zeros((32, 48), stitch.dtype)
    padded[: stitch.shape[0], : stitch.shape[1]] = stitch
    np.testing.assert_array_equal(levels[1][...], padded[::4, ::4])
    np.testing.assert_array_equal(np.asarray(levels[2]), padded[::16, ::16])
    n_before = sum(len(c.keys) for c in counted)
    np.testing.assert_array_equal(levels[2][1:, ::-1], padded[::16, ::16][1:, ::-1])
    assert sum(len(c.keys) for c in counted) == n_before  # cached: nothing read again
    # a level-0 read asks the tile for the window only, never the whole tile
    counted[5].keys.clear()
    levels[0][12:14, 13:15]
    assert counted[5].keys == [(slice(3, 5, 1), slice(2, 4, 1))]


_keys = st.one_of(
    st.integers(-20, 19),
    st.builds(
        slice,
        st.none() | st.integers(-25, 25),
        st.none() | st.integers(-25, 25),
        st.none() | st.integers(-4, 4).filter(bool),
    ),
)


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 7), st.integers(1, 7)), min_size=1, max_size=6),
    data=st.data(),
    stride=st.integers(1, 3),
    channels=st.booleans(),
)
def test_mosaic_getitem_matches_a_numpy_stitch(sizes, data, stride, channels):
    rng = np.random.default_rng(len(sizes))
    origins = data.draw(
        st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=len(sizes))
    )[: len(sizes)]
    lead = (2,) if channels else ()
    tiles = [rng.integers(1, 100, (*lead, h, w)).astype(np.int16) for h, w in sizes]
    yx = (1, 2) if channels else (0, 1)
    ref = _stitch(tiles, origins, yx)
    mosaic = MosaicArray(tiles, origins, ref.shape, yx=yx).level(stride)
    strided = [slice(None)] * ref.ndim
    strided[yx[0]] = strided[yx[1]] = slice(None, None, stride)
    level = ref[tuple(strided)]
    assert mosaic.shape == level.shape
    key = tuple(data.draw(_keys) for _ in range(data.draw(st.integers(1, ref.ndim))))
    try:
        expected = level[key]
    except IndexError:
        with pytest.raises(IndexError):
            mosaic[key]
        return
    got = mosaic[key]
    assert got.dtype == level.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_picking_a_channel_is_lazy():
    """napari's channel_axis split indexes every level with [c]: no pixel may be read then."""
    rng = np.random.default_rng(2)
    tiles = [_Counted(rng.integers(0, 9, (3, 5, 4)).astype(np.uint16)) for _ in range(3)]
    origins = [(0, 0), (0, 4), (5, 2)]
    ref = _stitch([t.arr for t in tiles], origins, (1, 2))
    mosaic = MosaicArray(tiles, origins, ref.shape, yx=(1, 2))
    second = mosaic[1]
    assert isinstance(second, MosaicArray) and second.shape == (10, 8)
    assert all(t.keys == [(1, slice(None), slice(None))] for t in tiles)  # tile views only
    assert isinstance(mosaic[0:2, ...], MosaicArray) and mosaic[0:2].shape == (2, 10, 8)
    np.testing.assert_array_equal(second[2:7, 1:6], ref[1, 2:7, 1:6])
    np.testing.assert_array_equal(np.asarray(mosaic[...]), ref)


def test_overlapping_elements_are_not_stitched():
    """Cell and nucleus labels of one FOV share everything but must stay two layers."""
    cells = Labels2DModel.parse(_unique_labels(20, 20), dims=("y", "x"))
    nuclei = Labels2DModel.parse(_unique_labels(20, 20, seed=2), dims=("y", "x"))
    sdata = sd.SpatialData(labels={"cells": cells, "nuclei": nuclei})
    layers = raster_layers(sdata, CS)
    assert [kw["name"] for _, kw, _ in layers] == ["cells", "nuclei"]
    assert all(isinstance(d, da.Array) for d, _, _ in layers)


def test_at_most_16_untileable_layers_per_kind_with_a_note():
    images = {
        f"img{k}": Image2DModel.parse(np.zeros((1, 8, 8), np.uint16), dims=("c", "y", "x"))
        for k in range(MAX_LAYERS_PER_KIND + 2)
    }
    layers = raster_layers(sd.SpatialData(images=images), CS)
    assert len(layers) == MAX_LAYERS_PER_KIND
    note = layers[0][1]["metadata"][META_KEY]["note"]
    assert "2 more image elements were left out" in note and "'img16'" in note


# --------------------------------------------------------------------------- images
def test_rgb_channels_and_many_channels():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (3, 10, 12)).astype(np.uint8)
    four = rng.integers(0, 999, (4, 10, 12)).astype(np.uint16)
    many = rng.integers(0, 999, (10, 10, 12)).astype(np.uint16)
    sdata = sd.SpatialData(
        images={
            "he": Image2DModel.parse(rgb, dims=("c", "y", "x")),
            "if": Image2DModel.parse(
                four, dims=("c", "y", "x"), c_coords=["DAPI", "CD3", "CD8", "PanCK"]
            ),
            "cycif": Image2DModel.parse(many, dims=("c", "y", "x")),
        },
        labels={"cells": Labels2DModel.parse(_unique_labels(10, 12), dims=("y", "x"))},
    )
    (d_rgb, kw_rgb, t_rgb), (d_if, kw_if, _), (d_many, kw_many, _), (_, kw_lab, t_lab) = (
        raster_layers(sdata, CS, labels_outline=False)
    )
    assert t_rgb == "image" and kw_rgb["rgb"] and isinstance(d_rgb, da.Array)
    np.testing.assert_array_equal(np.asarray(d_rgb), rgb.transpose(1, 2, 0))
    assert kw_rgb["blending"] == "translucent_no_depth"
    assert kw_if["channel_axis"] == 0 and d_if.shape == (4, 10, 12)
    assert kw_if["name"] == ["if · DAPI", "if · CD3", "if · CD8", "if · PanCK"]
    assert kw_if["blending"] == ["additive"] * 4
    assert kw_if["metadata"][META_KEY]["channels"] == ["DAPI", "CD3", "CD8", "PanCK"]
    assert "channel_axis" not in kw_many and d_many.shape == (10, 12)
    np.testing.assert_array_equal(np.asarray(d_many), many[0])
    assert "10 channels" in kw_many["metadata"][META_KEY]["note"]
    assert t_lab == "labels" and kw_lab["opacity"] == 0.6
    assert "contour" not in kw_lab["metadata"][META_KEY]


def test_rgb_tiles_make_one_rgb_mosaic():
    rng = np.random.default_rng(1)
    tiles = [rng.integers(0, 255, (3, 6, 5)).astype(np.uint8) for _ in range(2)]
    images = {
        f"fov{k}": Image2DModel.parse(
            t,
            dims=("c", "y", "x"),
            transformations={CS: Translation([5.0 * k, 0], axes=("x", "y"))},
        )
        for k, t in enumerate(tiles)
    }
    ((data, kwargs, _),) = raster_layers(sd.SpatialData(images=images), CS)
    assert kwargs["rgb"] and kwargs["name"] == "images (2 FOVs)" and data.shape == (6, 10, 3)
    np.testing.assert_array_equal(data[...], np.concatenate(tiles, axis=2).transpose(1, 2, 0))


def test_coordinate_systems_without_rasters_and_elements_elsewhere():
    img = Image2DModel.parse(np.zeros((1, 4, 4), np.uint8), dims=("c", "y", "x"))
    lab = Labels2DModel.parse(
        np.zeros((4, 4), np.int32), dims=("y", "x"), transformations={"aligned": Identity()}
    )
    sdata = sd.SpatialData(images={"img": img}, labels={"lab": lab})
    assert raster_layers(sdata, "nowhere") == []
    assert raster_layers(sd.SpatialData(), CS) == []
    assert [kw["name"] for _, kw, _ in raster_layers(sdata, CS)] == ["img"]
    ((_, kw, kind),) = raster_layers(sdata, "aligned")
    assert kind == "labels" and kw["metadata"][META_KEY]["contour"] == 1


# --------------------------------------------------------------------------- in a viewer
def test_layers_in_a_viewer_line_up_with_cells(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    tiles, origins, stitch = _tile_grid()
    sdata = _tile_sdata(tiles, origins, Scale([2.0, 2.0], axes=("x", "y")))
    flip = _unique_labels(64, 48, seed=9)
    sdata.labels["flipped"] = Labels2DModel.parse(
        flip, dims=("y", "x"), transformations={CS: _flip_y(200.0)}, scale_factors=[2, 2]
    )
    for k in range(2):
        sdata.images[f"fov{k}_image"] = Image2DModel.parse(
            np.full((2, 20, 20), k + 1, np.uint16),
            dims=("c", "y", "x"),
            c_coords=["DAPI", "CD3"],
            transformations={CS: Translation([0.0, 20.0 * k], axes=("x", "y"))},
        )
    for data, kwargs, kind in raster_layers(sdata, CS):
        added = (viewer.add_labels if kind == "labels" else viewer.add_image)(data, **kwargs)
        for layer in added if isinstance(added, list) else [added]:
            style_raster_layer(layer)
    names = [layer.name for layer in viewer.layers]
    assert names == [
        "images (2 FOVs) · DAPI",
        "images (2 FOVs) · CD3",
        "labels (12 FOVs)",
        "flipped",
    ]
    assert viewer.layers["labels (12 FOVs)"].contour == 1
    assert viewer.layers["flipped"].opacity == pytest.approx(0.6)
    cd3 = viewer.layers["images (2 FOVs) · CD3"]
    assert cd3.metadata[META_KEY]["kind"] == "image"
    assert isinstance(cd3.data, MosaicArray) and cd3.data.shape == (40, 20)  # split lazily
    assert cd3.blending == "additive"
    mosaic = viewer.layers["labels (12 FOVs)"]
    m = np.diag([2.0, 2.0, 1.0])
    cs, pix = _cells_in(m, stitch.shape, n=100, seed=11)
    np.testing.assert_array_equal(_read_at(mosaic, mosaic.data, cs), stitch[pix[:, 0], pix[:, 1]])
    flipped = viewer.layers["flipped"]
    assert flipped.multiscale
    cs, pix = _cells_in(_matrix(_flip_y(200.0)), flip.shape, n=100, seed=12)
    np.testing.assert_array_equal(
        _read_at(flipped, flipped.data[0], cs), flip[pix[:, 0], pix[:, 1]]
    )


# --------------------------------------------------------------------------- real data
def test_cosmx_cells_read_their_own_label(shared_data, tmp_path):
    """The CosMx lung store (2 FOVs): in "global" its labels are one mosaic, and each cell's
    centroid (the table's ``obsm["spatial"]``) reads its own ``cell_ID`` there."""
    from napari_spatial_impute.io.demo_stores import build_cosmx_lung_store

    sdata = sd.read_zarr(build_cosmx_lung_store(shared_data, tmp_path / "lung.zarr"))
    image, labels = raster_layers(sdata, "global")
    assert image[1]["name"] == "images (2 FOVs)" and image[1]["rgb"]
    data, kwargs, kind = labels
    assert kind == "labels" and kwargs["metadata"][META_KEY]["elements"] == [
        "fov2_labels",
        "fov3_labels",
    ]
    table = sdata.tables["table"]
    yx = np.asarray(table.obsm["spatial"], dtype=np.float64)[:, ::-1]
    read = _read_at(_layer(labels), data, yx)
    assert np.mean(read == table.obs["cell_ID"].to_numpy()) > 0.95


def test_mosaic_with_id_offsets_shifts_each_tiles_ids_lazily():
    """Per-FOV ids repeat; with offsets, tile k's nonzero pixels read id + offsets[k] (0 stays 0)."""
    tiles, origins, _ = _tile_grid()
    tiles = [np.where(t % 7 == 0, 0, t % 50).astype(np.uint16) for t in tiles]  # ids repeat
    offsets = [k * 65536 for k in range(len(tiles))]
    shifted = [
        np.where(t != 0, t.astype(np.uint32) + o, 0) for t, o in zip(tiles, offsets, strict=True)
    ]
    truth = _stitch([s.astype(np.uint32) for s in shifted], origins)
    levels = mosaic_pyramid([da.from_array(t, chunks=5) for t in tiles], origins)
    moved = levels[0].with_ids(offsets, np.uint32)
    assert moved.dtype == np.uint32 and moved.reads == 0  # nothing read to build it
    np.testing.assert_array_equal(moved[...], truth)
    np.testing.assert_array_equal(moved[3:17, 20:31], truth[3:17, 20:31])
    np.testing.assert_array_equal(moved.level(2)[...], truth[::2, ::2])
    np.testing.assert_array_equal(levels[0][...], _stitch(tiles, origins))  # the source unchanged
