"""Reader, writer and sample data of the napari plugin; saving each of the plugin's layers from
a viewer (File > Save Selected Layers)."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

from napari_spatial_impute import map_cells_to_space
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.plugin.reader import napari_get_reader
from napari_spatial_impute.plugin.samples import merfish_mapping, merfish_pair
from napari_spatial_impute.plugin.writer import write_points_h5ad
from napari_spatial_impute.viz.layers import META_KEY, plugin_meta, source_adata, spatial_layers


@pytest.fixture(scope="module")
def result_file(tmp_path_factory, merfish_pair):
    ref, spa = merfish_pair
    res = result_to_anndata(
        map_cells_to_space(ref.copy(), spa.copy(), cluster_key="cell_type", epochs=20)
    )
    x = res.obsm["spatial"][:, 0]
    q = np.quantile(x, [0.25, 0.5, 0.75])
    res.obs["fov"] = pd.Categorical(np.array(["1", "2", "3", "4"])[np.searchsorted(q, x)])
    res.obs["sample"] = pd.Categorical(np.where(x < q[1], "A", "B"))  # FOVs 1, 2 | 3, 4
    path = tmp_path_factory.mktemp("res") / "result.h5ad"
    res.write_h5ad(path)
    return path


def _assert_same(a: ad.AnnData, b: ad.AnnData) -> None:
    assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
    np.testing.assert_array_equal(np.asarray(a.X), np.asarray(b.X))
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert set(a.obsm) == set(b.obsm)
    for k in a.obsm:
        va, vb = a.obsm[k], b.obsm[k]
        if isinstance(va, pd.DataFrame):
            pd.testing.assert_frame_equal(va, vb)
        else:
            np.testing.assert_array_equal(va, vb)
    ia, ib = a.uns["spatial_impute"], b.uns["spatial_impute"]
    assert ia["params"] == ib["params"]
    for k, v in ia["history"].items():
        np.testing.assert_array_equal(v, ib["history"][k])


def test_reader_opens_result_in_one_layer_for_all_samples(result_file):
    reader = napari_get_reader(str(result_file))
    assert callable(reader)
    layers = reader(str(result_file))
    ((data, kw, _),) = layers  # one layer for both samples, not one per sample
    assert kw["name"] == "most likely cell_type"
    adata = source_adata(kw["metadata"])
    assert adata.n_vars == 134 and "cluster_probabilities" in adata.obsm, (
        "imputed genes come with the layers"
    )
    assert isinstance(kw["features"]["cell_type_predicted"].dtype, pd.CategoricalDtype)
    assert len(data) == 750
    md = kw["metadata"][META_KEY]
    rows = np.asarray(md["rows"])
    assert md["sample"] == "" and md["sample_key"] == "sample"
    assert np.array_equal(np.sort(rows), np.arange(adata.n_obs))  # every cell once
    # apart in space: drawn where they are (no offset, no translate)
    np.testing.assert_array_equal(data, adata.obsm["spatial"][rows][:, ::-1])
    assert "translate" not in kw
    assert list(kw["features"]["obs_name"]) == list(adata.obs_names[rows])
    # the sample and the FOV are feature columns, never layers of their own
    feats = kw["features"]
    samples = feats["sample"].astype(str).to_numpy()
    np.testing.assert_array_equal(samples, adata.obs["sample"].astype(str).to_numpy()[rows])
    fovs = feats["fov"].astype(str).to_numpy()
    np.testing.assert_array_equal(fovs, adata.obs["fov"].astype(str).to_numpy()[rows])
    fovs_of = {s: sorted(set(fovs[samples == s])) for s in ("A", "B")}
    assert fovs_of == {"A": ["1", "2"], "B": ["3", "4"]}


def test_reader_lays_out_samples_sharing_coordinates(tmp_path, merfish_pair):
    """Sections imaged separately share coordinates: drawn side by side in one layer, saved
    with the file's own coordinates (a cell the user moved: where it was moved to)."""
    from napari_spatial_impute.viz.sections import display_yx

    _, spa = merfish_pair
    spa = spa.copy()
    x = spa.obsm["spatial"][:, 0]
    spa.obs["fov"] = np.where(x < np.median(x), "1", "2")
    one = spa.copy()
    one.obs["section"] = "s1"
    two = spa.copy()
    two.obs["section"] = "s2"
    two.obs_names = [f"{c}-2" for c in two.obs_names]
    both = ad.concat([one, two])
    both.obs["section"] = both.obs["section"].astype("category")
    path = tmp_path / "two_sections.h5ad"
    both.write_h5ad(path)
    layers = napari_get_reader(str(path))(str(path))
    ((data, kw, _),) = layers  # one layer for both sections
    assert kw["name"] == "two_sections" and len(data) == 2 * spa.n_obs
    feats = kw["features"]
    first = (feats["section"].astype(str) == "s1").to_numpy()
    # each cell's FOV and section are features
    np.testing.assert_array_equal(feats["fov"].astype(str)[~first], spa.obs["fov"])
    # drawn where display_yx puts them: the second section moved, the two boxes apart
    rows = np.asarray(kw["metadata"][META_KEY]["rows"])
    adata = source_adata(kw["metadata"])
    np.testing.assert_allclose(data, display_yx(adata, rows, "section"))
    np.testing.assert_array_equal(data[first], spa.obsm["spatial"][:, ::-1])
    assert not np.allclose(data[~first], spa.obsm["spatial"][:, ::-1])
    lo1, hi1 = data[first].min(0), data[first].max(0)
    lo2, hi2 = data[~first].min(0), data[~first].max(0)
    assert (hi1 < lo2).any() or (hi2 < lo1).any()
    # saving writes the file's coordinates back, exactly, not where the sections are drawn
    out = write_points_h5ad(str(tmp_path / "saved.h5ad"), layers)[0]
    back = ad.read_h5ad(out)
    assert list(back.obs_names) == list(both.obs_names)
    np.testing.assert_array_equal(back.obsm["spatial"], both.obsm["spatial"])
    # read back: the same layer, drawn where it was
    ((again, kw_again, _),) = napari_get_reader(out)(out)
    np.testing.assert_array_equal(again, data)
    pd.testing.assert_frame_equal(kw_again["features"], feats)
    # a cell of the second section moved by the user is saved where it was moved to, in the
    # file's coordinates (its section's offset taken off)
    moved = data.copy()
    i = int(np.flatnonzero(~first)[0])
    moved[i] += (7.0, -3.0)
    out2 = write_points_h5ad(str(tmp_path / "moved.h5ad"), [(moved, kw, "points")])[0]
    back2 = ad.read_h5ad(out2)
    cell = back2.obs_names.get_loc(feats["obs_name"].iloc[i])
    stored = both.obsm["spatial"][both.obs_names.get_loc(feats["obs_name"].iloc[i])]
    np.testing.assert_allclose(back2.obsm["spatial"][cell], stored + (-3.0, 7.0))
    others = np.ones(back2.n_obs, dtype=bool)
    others[cell] = False
    np.testing.assert_array_equal(back2.obsm["spatial"][others], both.obsm["spatial"][others])


def test_read_write_read_round_trip(result_file, tmp_path):
    first = napari_get_reader(str(result_file))(str(result_file))
    out = write_points_h5ad(str(tmp_path / "again"), first)
    assert out == [str(tmp_path / "again.h5ad")]
    second = napari_get_reader(out[0])(out[0])
    _assert_same(ad.read_h5ad(result_file), ad.read_h5ad(out[0]))
    for (d1, k1, _), (d2, k2, _) in zip(first, second, strict=True):
        np.testing.assert_array_equal(d1, d2)
        pd.testing.assert_frame_equal(k1["features"], k2["features"])
        assert k1["name"] == k2["name"]


def test_writer_saves_moved_points_and_new_features(result_file, tmp_path):
    ((data, kw, t),) = napari_get_reader(str(result_file))(str(result_file))
    in_b = (kw["features"]["sample"] == "B").to_numpy()
    data = data + np.where(in_b[:, None], [1.0, 0.0], 0.0)  # move sample B down by 1 (y)
    checked = np.where(in_b, True, None)  # a column the user filled for sample B only
    kw = dict(kw, features=kw["features"].assign(checked=checked))
    out = write_points_h5ad(str(tmp_path / "edited.h5ad"), [(data, kw, t)])[0]
    back = ad.read_h5ad(out)
    orig = ad.read_h5ad(result_file)
    in2 = (orig.obs["sample"] == "B").to_numpy()
    np.testing.assert_allclose(back.obsm["spatial"][in2, 1], orig.obsm["spatial"][in2, 1] + 1.0)
    np.testing.assert_array_equal(back.obsm["spatial"][~in2], orig.obsm["spatial"][~in2])
    checked = back.obs["checked"].astype(object)
    assert (checked[in2] == "True").all(), "a column of mixed values is saved as text"
    assert checked[~in2].isna().all(), "with missing values for the cells left empty"
    np.testing.assert_array_equal(back.X, orig.X)


def test_reader_rejects_what_it_cannot_show(tmp_path, merfish_pair):
    assert napari_get_reader(str(tmp_path / "x.tif")) is None
    junk = tmp_path / "junk.h5ad"
    junk.write_bytes(b"not an hdf5 file")
    assert napari_get_reader(str(junk)) is None
    plain = tmp_path / "plain.h5ad"
    with h5py.File(plain, "w") as f:
        f.create_dataset("values", data=np.arange(3))
    assert napari_get_reader(str(plain)) is None
    ref, _ = merfish_pair
    no_coords = tmp_path / "ref.h5ad"
    ref.write_h5ad(no_coords)  # no obsm['spatial'] nor X_umap: nothing to draw
    assert napari_get_reader(str(no_coords)) is None
    assert napari_get_reader([str(junk), str(no_coords)]) is None


def test_reader_opens_reference_with_umap(tmp_path, merfish_pair):
    ref, _ = merfish_pair
    ref = ref.copy()
    ref.obsm["X_umap"] = np.random.default_rng(0).normal(size=(ref.n_obs, 2)).astype(np.float32)
    path = tmp_path / "ref.h5ad"
    ref.write_h5ad(path)
    ((data, kw, _),) = napari_get_reader(str(path))(str(path))
    assert data.shape == (1308, 2) and kw["face_color"] == "cell_type"
    assert kw["metadata"][META_KEY]["role"] == "reference"


def test_shared_data_with_fovs(shared_data):
    path = shared_data / "merfish_mop" / "spatial.h5ad"
    if not path.exists():
        pytest.skip("merfish_mop is not in the shared data folder")
    layers = napari_get_reader(str(path))(str(path))
    # only a "slice" column: each slice is a section (and its one FOV), all in one layer
    ((data, kw, _),) = layers
    adata = source_adata(kw["metadata"])
    assert len(data) == adata.n_obs
    slices = adata.obs["slice"].astype(str).to_numpy()
    md = kw["metadata"][META_KEY]
    assert md["sample_key"] == "slice" and kw["name"] == "spatial"
    rows = np.asarray(md["rows"])
    assert np.array_equal(np.sort(rows), np.arange(adata.n_obs))
    # the slice is a feature column
    shown = kw["features"]["slice"].astype(str).to_numpy()
    np.testing.assert_array_equal(shown, slices[rows])
    boxes = [np.r_[data[shown == s].min(0), data[shown == s].max(0)] for s in sorted(set(slices))]
    assert len(boxes) == 4
    # the slices share coordinates in part: laid out so that none covers another
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def test_sample_data_returns_layers(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    pair = merfish_pair()
    assert [kw["name"] for _, kw, _ in pair] == ["MERFISH spatial", "MERFISH reference UMAP"]
    assert len(pair[0][0]) == 750 and len(pair[1][0]) == 1308
    mapping = merfish_mapping()
    assert len(mapping) == 1
    data, kw, kind = mapping[0]
    assert kind == "points" and len(data) == 750
    res = source_adata(kw["metadata"])
    assert res.n_vars == 134 and res.uns["spatial_impute"]["training_score"] > 0.5


def test_sample_umap_is_cached(tmp_path, monkeypatch, merfish_pair):
    from napari_spatial_impute.plugin import samples as _sample_data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ref = merfish_pair[0].copy()
    calls = []
    real = _sample_data.ensure_umap
    monkeypatch.setattr(_sample_data, "ensure_umap", lambda a: calls.append(1) or real(a))
    first = _sample_data.cached_umap(ref)
    again = merfish_pair[0].copy()
    second = _sample_data.cached_umap(again)
    assert len(calls) == 1, "the second call reads the cache"
    np.testing.assert_array_equal(first, second)
    assert list((tmp_path / "napari-spatial-impute").glob("umap-1308-*.npy"))


# --------------------------------------------------------------------------- saving from a viewer
def _save_selected(viewer, layers, path) -> ad.AnnData:
    """File > Save Selected Layers with the plugin's AnnData writer; the file read back."""
    viewer.layers.selection = set(layers)
    out = viewer.layers.save(str(path), selected=True, plugin="napari-spatial-impute")
    assert out == [str(path)]
    return ad.read_h5ad(out[0])


def _assert_whole_result(back: ad.AnnData, res: ad.AnnData) -> None:
    """Every gene, obs column, obsm entry, interval layer and parameter of ``res``."""
    assert back.shape == res.shape and res.n_vars > 0
    assert list(back.obs_names) == list(res.obs_names)
    assert list(back.var_names) == list(res.var_names)
    np.testing.assert_array_equal(np.asarray(back.X), np.asarray(res.X))
    # h5ad stores text columns as categories
    pd.testing.assert_frame_equal(back.obs, res.obs, check_dtype=False, check_categorical=False)
    assert set(back.obsm) == set(res.obsm)
    for k in res.obsm:
        if isinstance(res.obsm[k], pd.DataFrame):
            pd.testing.assert_frame_equal(back.obsm[k], res.obsm[k])
        else:
            np.testing.assert_array_equal(np.asarray(back.obsm[k]), np.asarray(res.obsm[k]))
    assert set(back.layers) == set(res.layers) and len(res.layers) > 0, "the intervals"
    for k in res.layers:
        np.testing.assert_array_equal(np.asarray(back.layers[k]), np.asarray(res.layers[k]))
    assert back.uns["spatial_impute"]["params"] == res.uns["spatial_impute"]["params"]
    assert back.uns["spatial_impute"]["cluster_key"] == "cell_type"


def _show(viewer, model, w, role: str) -> list:
    """The layers of one role, shown as a user does (Explore widget, or the Map / Load layers)."""
    from napari.layers import Points

    if role in ("imputed", "measured", "interval"):
        w.uncertainty.interval_check.setChecked(True)
        w.show_gene("Gad1")
    elif role == "probability":
        w.show_cluster(w.cluster_combo.itemText(0))
    elif role == "predicted":
        w.show_predicted()
    else:  # the Map widget's result layer, or the Load widget's spatial data layer
        data = model.result if role == "result" else model.spatial
        for d, kw, _ in spatial_layers(data, role=role):
            viewer.add_layer(Points(d, **kw))
    kind = "predicted" if role == "result" else role
    layers = [lay for lay in viewer.layers if plugin_meta(lay).get("kind") == kind]
    assert layers, f"no {role} layer shown"
    return layers


@pytest.mark.parametrize(
    "role", ["imputed", "measured", "interval", "probability", "predicted", "result", "spatial"]
)
def test_saving_any_layer_writes_its_whole_data_set(make_widget, tmp_path, role):
    """Issue 24: an Explore layer saved 750 cells x 0 genes and no uns; each role saves it all."""
    from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget

    viewer, model, w = make_widget(ExploreWidget)
    layers = _show(viewer, model, w, role)
    back = _save_selected(viewer, layers, tmp_path / f"{role}.h5ad")
    if role == "spatial":
        spa = model.spatial
        assert back.shape == spa.shape and list(back.obs_names) == list(spa.obs_names)
        assert (back.X != spa.X).nnz == 0
        np.testing.assert_array_equal(back.obsm["spatial"], spa.obsm["spatial"])
    else:
        _assert_whole_result(back, model.result)


def test_saving_several_roles_together_and_a_greyed_out_gene(make_widget, tmp_path):
    """Imputed (wide intervals greyed out: a TypeError on 'wide interval' before), measured,
    interval width and the most likely cluster selected together: the result, once."""
    from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget

    viewer, model, w = make_widget(ExploreWidget)
    w.uncertainty.interval_check.setChecked(True)
    w.show_gene("Gad1")
    w.uncertainty.mask_check.setChecked(True)  # wide intervals: grey out
    assert any("wide interval" in lay.features.columns for lay in viewer.layers)
    w.show_predicted()
    ours = [lay for lay in viewer.layers if plugin_meta(lay).get("kind")]
    assert {plugin_meta(lay)["kind"] for lay in ours} >= {
        "imputed",
        "measured",
        "interval",
        "predicted",
    }
    _assert_whole_result(_save_selected(viewer, ours, tmp_path / "all.h5ad"), model.result)


def test_napari_csv_writer_saves_an_explore_layer(make_widget, tmp_path):
    """The dialog's default filter for one Points layer is napari's csv writer: the shown
    layer's points and values, one row per cell."""
    from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget

    viewer, model, w = make_widget(ExploreWidget)
    w.show_gene("Gad1")
    (layer,) = [lay for lay in viewer.layers if plugin_meta(lay).get("kind") == "imputed"][:1]
    viewer.layers.selection = {layer}
    out = viewer.layers.save(str(tmp_path / "gad1"), selected=True, plugin="napari")
    assert out == [str(tmp_path / "gad1.csv")]
    table = pd.read_csv(out[0])
    assert len(table) == len(layer.data) and "Gad1" in table.columns


def test_opening_a_shown_result_again_adds_no_copy(result_file, tmp_path, make_napari_viewer_proxy):
    """Issue 24 (10a): opening the same result twice added "most likely cell_type [1]"; the
    layers shown are kept (and selected); a file changed on disk replaces them."""
    import os
    import shutil

    path = tmp_path / "again.h5ad"
    shutil.copy(result_file, path)
    viewer = make_napari_viewer_proxy()
    viewer.open(str(path), plugin="napari-spatial-impute")
    first = list(viewer.layers)
    names = [lay.name for lay in first]
    assert names == ["most likely cell_type"]  # one layer, both samples in it
    viewer.open(str(path), plugin="napari-spatial-impute")
    assert list(viewer.layers) == first, "the same layers, no copy"
    assert set(viewer.layers.selection) == set(first)
    st = path.stat()  # rewritten since: the file as it is now, in place of the old layers
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    viewer.open(str(path), plugin="napari-spatial-impute")
    assert [lay.name for lay in viewer.layers] == names
    assert not any(lay in first for lay in viewer.layers)
