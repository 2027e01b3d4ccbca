"""Pure layer builders: coordinates, FOV split, features, colours, placement, back to AnnData."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.plugin.writer import layers_to_anndata
from napari_spatial_impute.viz.coords import from_napari
from napari_spatial_impute.viz.layers import (
    CELL_COLUMN,
    META_KEY,
    PREDICTED_ROLE,
    beside_transform,
    bounds_of,
    color_kwargs,
    features_frame,
    point_size,
    recolor,
    reference_layer,
    spatial_layers,
    to_napari,
)


def _tuples(layer_data):
    """Layer data as a napari writer receives it (features inside meta)."""
    return [(d, dict(kw), t) for d, kw, t in layer_data]


def test_axis_order_2d_and_3d():
    xy = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(to_napari(xy), [[2.0, 1.0], [4.0, 3.0]])
    xyz = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(to_napari(xyz), [[3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(from_napari(to_napari(xyz)), xyz)


def test_point_size_is_neighbour_spacing():
    g = np.stack(np.meshgrid(np.arange(20) * 5.0, np.arange(20) * 5.0), -1).reshape(-1, 2)
    assert point_size(g) == pytest.approx(4.5)


def test_spatial_layers_one_for_all_samples_fov_and_sample_features(merfish):
    from napari_spatial_impute.viz.sections import display_yx

    _, spa = merfish
    spa.obs["fov"] = np.where(np.arange(spa.n_obs) % 3 == 0, "b", "a")  # text, not categorical
    spa.obs["count"] = np.arange(spa.n_obs, dtype=np.float32)
    ((data, kw, _),) = spatial_layers(spa, color_by="fov", name="sp")  # one layer, not per FOV
    assert kw["name"] == "sp" and len(data) == spa.n_obs
    assert isinstance(kw["features"]["fov"].dtype, pd.CategoricalDtype)
    spa.obs["section"] = pd.Categorical(np.where(np.arange(spa.n_obs) < 400, "s2", "s1"))
    out = spatial_layers(spa, color_by="fov", name="sp")  # "section" is found as the sample
    ((data, kw, kind),) = out  # one layer for both samples, not one per sample
    assert kind == "points" and kw["name"] == "sp" and len(data) == spa.n_obs
    assert "translate" not in kw  # the layout is in the coordinates
    f = kw["features"]
    assert isinstance(f["fov"].dtype, pd.CategoricalDtype)
    assert isinstance(f["section"].dtype, pd.CategoricalDtype)  # the sample: a feature column
    assert f["count"].dtype == np.float32
    rows = spa.obs_names.get_indexer(f[CELL_COLUMN])
    np.testing.assert_array_equal(kw["metadata"][META_KEY]["rows"], rows)
    np.testing.assert_array_equal(f["section"].astype(str), spa.obs["section"].astype(str)[rows])
    assert kw["face_color"] == "fov" and set(kw["face_color_cycle"]) == {"a", "b"}
    md = kw["metadata"][META_KEY]
    assert md["adata"] is spa and md["sample_key"] == "section" and md["sample"] == ""
    # drawn where display_yx puts each cell: the two sections share coordinates, so they are
    # side by side, never overlapping
    np.testing.assert_allclose(data, display_yx(spa, rows, "section"))
    s1, s2 = ((f["section"].astype(str) == s).to_numpy() for s in ("s1", "s2"))
    box1 = np.r_[data[s1].min(0), data[s1].max(0)]
    box2 = np.r_[data[s2].min(0), data[s2].max(0)]
    assert box1[3] < box2[1] or box2[3] < box1[1] or box1[2] < box2[0] or box2[2] < box1[0]
    one = spatial_layers(spa, fov_key=None, sample_key="", detect_fov=False)
    assert len(one) == 1 and len(one[0][0]) == spa.n_obs
    np.testing.assert_array_equal(one[0][0], spa.obsm["spatial"][:, ::-1])  # as in the file


def test_3d_coordinates(merfish):
    _, spa = merfish
    spa.obsm["spatial"] = np.c_[spa.obsm["spatial"], np.arange(spa.n_obs) % 4]
    ((data, _, _),) = spatial_layers(spa)
    assert data.shape == (spa.n_obs, 3)
    np.testing.assert_array_equal(data[:, 0], np.arange(spa.n_obs) % 4)


def test_result_layers_colour_by_predicted(merfish):
    from napari_spatial_impute import map_cells_to_space

    ref, spa = merfish
    res = result_to_anndata(map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=5))
    ((data, kw, _),) = spatial_layers(res)
    assert kw["name"] == "most likely cell_type"
    assert kw["face_color"] == "cell_type_predicted"
    assert kw["metadata"][META_KEY]["kind"] == PREDICTED_ROLE
    assert kw["metadata"][META_KEY]["role"] == "result"


def test_color_kwargs_numeric_and_missing():
    f = pd.DataFrame(
        {"v": np.r_[np.zeros(98), 50.0, 100.0].astype(np.float32), "c": pd.Categorical(["x"] * 100)}
    )
    kw = color_kwargs(f, "v")
    assert kw["face_colormap"] == "viridis" and kw["face_contrast_limits"][1] < 100
    assert color_kwargs(f, None) == {"face_color": "#b0b0b0"}
    assert color_kwargs(f, "c", palette=["#ff0000"])["face_color_cycle"] == {"x": "#ff0000"}


def test_reference_beside_tissue(merfish):
    ref, spa = merfish
    rng = np.random.default_rng(0)
    ref.obsm["X_umap"] = rng.normal(size=(ref.n_obs, 2)).astype(np.float32)
    tissue = spatial_layers(spa)
    lo, hi = bounds_of([d for d, _, _ in tissue])
    data, kw, _ = reference_layer(ref, cluster_key="cell_type", beside=(lo, hi))
    world = data * kw["scale"] + kw["translate"]
    assert world[:, 1].min() > hi[1], "to the right of the tissue"
    assert world[:, 0].min() == pytest.approx(lo[0]) and world[:, 0].max() == pytest.approx(hi[0])
    assert len(kw["face_color_cycle"]) == 14
    with pytest.raises(ValueError, match="X_umap"):
        reference_layer(spa)


def test_beside_transform_keeps_aspect():
    data = np.array([[0.0, 0.0], [1.0, 2.0]])
    scale, translate = beside_transform(data, (np.array([0.0, 0.0]), np.array([10.0, 10.0])))
    assert scale[0] == scale[1] == 10.0
    np.testing.assert_allclose(data * scale + translate, [[0.0, 11.0], [10.0, 31.0]])


def test_layers_to_anndata_keeps_edits_and_deletions(merfish):
    _, spa = merfish
    spa.obs["fov"] = pd.Categorical(np.where(np.arange(spa.n_obs) < 300, "a", "b"))
    out = _tuples(spatial_layers(spa))
    # user edits: move a point, delete two cells, add a feature column
    d0, kw0, _ = out[0]
    d0 = d0.copy()
    d0[0] += 10.0
    kw0["features"] = kw0["features"].iloc[2:].reset_index(drop=True).assign(note="x")
    out[0] = (d0[2:], kw0, "points")
    back = layers_to_anndata(out)
    assert back.n_obs == spa.n_obs - 2
    assert list(back.obs_names) == list(spa.obs_names[2:])
    np.testing.assert_allclose(back.obsm["spatial"][0], spa.obsm["spatial"][2])
    assert (back.obs["note"].iloc[:298] == "x").all()
    np.testing.assert_array_equal(back.X.toarray(), spa.X[2:].toarray())


def test_layers_to_anndata_rejects_mixed_sources(merfish):
    ref, spa = merfish
    ref.obsm["X_umap"] = np.zeros((ref.n_obs, 2), dtype=np.float32)
    mixed = _tuples(spatial_layers(spa)) + [reference_layer(ref)]
    with pytest.raises(ValueError, match="different data sets"):
        layers_to_anndata(mixed)
    with pytest.raises(ValueError, match="Points"):
        layers_to_anndata([(np.zeros((2, 2)), {}, "image")])


def test_plain_points_become_cells():
    feats = pd.DataFrame({"kind": ["a", "b", "a"]})
    back = layers_to_anndata(
        [
            (
                np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
                {"features": feats, "name": "p"},
                "points",
            )
        ]
    )
    assert back.shape == (3, 0)
    np.testing.assert_array_equal(back.obsm["spatial"], [[2.0, 1.0], [4.0, 3.0], [6.0, 5.0]])
    assert list(back.obs["kind"]) == ["a", "b", "a"] and set(back.obs["layer"]) == {"p"}


def test_features_frame_has_range_index_and_names():
    obs = pd.DataFrame({"t": ["u", "v"], "n": [1, 2]}, index=["c1", "c2"])
    f = features_frame(obs)
    assert list(f.index) == [0, 1] and list(f[CELL_COLUMN]) == ["c1", "c2"]
    assert isinstance(f["t"].dtype, pd.CategoricalDtype) and f["n"].dtype.kind == "i"


def test_recolour_200k_points_in_place_sets_colours_only():
    """200,000 points recoloured in place: no features reset (the costly step), the colours
    those of the colormap and of the cycle (behaviour, not a clock: issue 24)."""
    from napari.layers import Points

    n = 200_000
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        X=np.zeros((n, 1), dtype=np.float32),
        obs=pd.DataFrame(
            {
                "type": pd.Categorical(rng.choice(list("abcdefgh"), n)),
                "value": rng.random(n).astype(np.float32),
            },
            index=[f"c{i}" for i in range(n)],
        ),
    )
    adata.obsm["spatial"] = rng.random((n, 2)) * 5000
    ((data, kw, _),) = spatial_layers(adata, color_by="type", size=3.0)
    layer = Points(data, **kw)
    resets = []
    layer.events.features.connect(resets.append)
    recolor(layer, "value")
    assert layer.face_color_mode == "colormap"
    lo, hi = layer.face_contrast_limits
    v = adata.obs["value"].to_numpy()
    expected = layer.face_colormap.map(np.clip((v - lo) / (hi - lo), 0, 1))
    assert np.allclose(layer.face_color, expected, atol=1e-5)
    recolor(layer, "type")
    assert layer.face_color_mode == "cycle"
    assert len(np.unique(layer.face_color, axis=0)) == 8
    assert resets == []  # the same points: features never set again


def test_cluster_colours_match_between_tissue_and_umap(merfish):
    from napari_spatial_impute import map_cells_to_space

    ref, spa = merfish
    res = result_to_anndata(map_cells_to_space(ref, spa, cluster_key="cell_type", epochs=5))
    ref.obsm["X_umap"] = np.zeros((ref.n_obs, 2), dtype=np.float32)
    ((_, tissue, _),) = spatial_layers(res)
    _, umap, _ = reference_layer(ref, cluster_key="cell_type")
    shared = set(tissue["face_color_cycle"]) & set(umap["face_color_cycle"])
    assert len(shared) == 14
    assert all(tissue["face_color_cycle"][c] == umap["face_color_cycle"][c] for c in shared)


def test_saving_part_of_the_cells_keeps_categories(merfish):
    _, spa = merfish
    spa.obs["kind"] = pd.Categorical(
        ["rare"] + ["common"] * (spa.n_obs - 1), categories=["common", "rare", "unused"]
    )
    ((data, kw, t),) = _tuples(spatial_layers(spa))
    kw["features"] = kw["features"].iloc[1:].reset_index(drop=True)  # delete the only 'rare' cell
    back = layers_to_anndata([(data[1:], kw, t)])
    assert list(back.obs["kind"].cat.categories) == ["common", "rare", "unused"]
    assert back.n_obs == spa.n_obs - 1
