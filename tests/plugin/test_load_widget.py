"""Load widget: files and plugin layers into the model, one spatial layer (samples and FOVs as
features), reference UMAP beside."""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_spatial_impute.io.datasets import bundled_paths
from napari_spatial_impute.plugin.sync import viewer_model
from napari_spatial_impute.plugin.widgets.load_widget import (
    FROM_FILE,
    NONE,
    LoadWidget,
    data_summary,
)
from napari_spatial_impute.viz.layers import plugin_meta


def _wait(qtbot, worker, timeout=180_000):
    if worker is not None and worker.is_running:
        with qtbot.waitSignal(worker.finished, timeout=timeout):
            pass


def _choose(qtbot, w, combo, text):
    """Choose ``text`` in a key combo and wait for its worker to be applied."""
    combo.setCurrentText(text)
    _wait(qtbot, w.key_worker, timeout=60_000)
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)


def _world_bounds(layer):
    d = (
        np.asarray(layer.data)[:, -2:] * np.asarray(layer.scale)[-2:]
        + np.asarray(layer.translate)[-2:]
    )
    return d.min(axis=0), d.max(axis=0)


@pytest.fixture
def viewer_widget(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    w = LoadWidget(viewer)
    qtbot.addWidget(w)
    return viewer, w


def test_load_bundled_pair(viewer_widget, qtbot):
    viewer, w = viewer_widget
    ref_path, sp_path = bundled_paths()
    w.reference_row.path.setText(str(ref_path))
    w.spatial_row.path.setText(str(sp_path))
    w.load()
    # reading, then the UMAP (scanpy, slow on a busy machine) in a second worker
    qtbot.waitUntil(lambda: w.reference_points is not None, timeout=240_000)

    model = viewer_model(viewer)
    assert model.reference.n_obs == 1308 and model.spatial.n_obs == 750
    assert model.cluster_key == "cell_type" and model.fov_key is None
    assert w.cluster_combo.currentText() == "cell_type"
    assert w.fov_combo.currentText() == NONE
    text = w.summary.text()
    assert "1,308 cells x 134 genes, 14 clusters" in text
    assert "750 cells x 134 genes, 1 FOV" in text and "Shared genes: 134" in text

    assert [layer.name for layer in viewer.layers] == ["spatial", "reference UMAP"]
    tissue, umap = viewer.layers
    assert len(tissue.data) == 750 and len(umap.data) == 1308
    assert "X_umap" in model.reference.obsm
    # the reference is coloured by cluster and sits right of the tissue, same height scale
    assert umap.face_color_mode == "cycle"
    assert len(np.unique(umap.face_color, axis=0)) == 14
    (t_lo, t_hi), (u_lo, u_hi) = _world_bounds(tissue), _world_bounds(umap)
    assert u_lo[1] > t_hi[1], "UMAP is to the right of the tissue"
    assert np.isclose(u_hi[0] - u_lo[0], t_hi[0] - t_lo[0], rtol=0.05)
    assert plugin_meta(umap)["adata"] is model.reference

    # after Load the view shows the tissue and the UMAP beside it (issue 24, 8: off-screen)
    lo, hi = viewer.layers.extent.world[:, -2:]
    span = float(np.max(hi - lo))  # napari adds the points' size to the extent: within 1 %
    np.testing.assert_allclose(viewer.camera.center[-2:], (lo + hi) / 2, atol=0.01 * span)
    assert lo[1] <= t_lo[1] and hi[1] >= u_hi[1] - 1e-6

    # changing the cluster key recolours the same layer (no new layer)
    _choose(qtbot, w, w.cluster_combo, NONE)
    assert model.cluster_key is None and len(viewer.layers) == 2
    assert len(np.unique(umap.face_color, axis=0)) == 1
    _choose(qtbot, w, w.cluster_combo, "cell_type")
    assert len(np.unique(umap.face_color, axis=0)) == 14


def test_fovs_and_samples_are_features_of_one_layer(viewer_widget, qtbot, merfish):
    viewer, w = viewer_widget
    _, spa = merfish
    x = spa.obsm["spatial"][:, 0]
    spa.obs["fov"] = pd.Categorical(np.digitize(x, np.quantile(x, [0.25, 0.5, 0.75])).astype(str))
    spa.obs["area"] = np.linspace(1, 2, spa.n_obs).astype(np.float32)
    model = viewer_model(viewer)
    model.set_spatial(spa)
    w._on_loaded((None, spa, False, True))
    assert model.fov_key == "fov" and w.fov_combo.currentText() == "fov"
    assert model.sample_key == "" and w.sample_combo.currentText() == NONE  # none found
    (layer,) = viewer.layers  # one layer: FOVs are not layers
    assert layer.name == "spatial" and len(layer.data) == 750
    assert sorted(set(layer.features["fov"].astype(str))) == ["0", "1", "2", "3"]
    assert "4 FOVs" in w.summary.text()
    w.color_combo.setCurrentText("area")
    assert list(viewer.layers) == [layer], "recolouring keeps the layer"
    assert layer.face_color_mode == "colormap"
    w.color_combo.setCurrentText("fov")
    assert layer.face_color_mode == "cycle"
    assert len(np.unique(np.round(layer.face_color, 3), axis=0)) == 4, "a colour per FOV"
    # a sample column: still one layer, every sample in it, the sample a feature
    spa.obs["section"] = pd.Categorical(np.where(spa.obs["fov"].astype(int) < 2, "s1", "s2"))
    w._fill_keys()
    _choose(qtbot, w, w.sample_combo, "section")
    assert model.sample_key == "section"
    assert list(viewer.layers) == [layer] and layer.name == "spatial"
    assert len(layer.data) == 750 and plugin_meta(layer)["sample_key"] == "section"
    rows = plugin_meta(layer)["rows"]
    np.testing.assert_array_equal(layer.features["section"], spa.obs["section"].to_numpy()[rows])
    assert "in 2 samples" in w.summary.text()
    _choose(qtbot, w, w.sample_combo, "area")  # per-cell numbers: refused, nothing rebuilt
    assert "distinct values" in w.status.text() and model.sample_key == "section"
    assert w.sample_combo.currentText() == "section" and list(viewer.layers) == [layer]
    _choose(qtbot, w, w.sample_combo, NONE)
    assert "Error" not in w.status.text(), "a valid choice clears the refused one's line"
    assert list(viewer.layers) == [layer] and model.sample_key == ""
    _choose(qtbot, w, w.fov_combo, NONE)
    assert [lay.name for lay in viewer.layers] == ["spatial"]
    assert model.fov_key is None


def test_data_from_plugin_layers(viewer_widget, qtbot):
    viewer, w = viewer_widget
    from napari_spatial_impute.io.datasets import load_merfish_hypothalamus
    from napari_spatial_impute.plugin.reader import read_h5ad_layers  # noqa: F401  (reader import works)
    from napari_spatial_impute.viz.layers import spatial_layers

    _, spa = load_merfish_hypothalamus()
    for data, kw, _ in spatial_layers(spa, name="opened"):
        viewer.add_points(data, **kw)
    model = viewer_model(viewer)
    assert model.spatial is spa, "a plugin layer added to the viewer fills the model"
    choices = [
        w.spatial_row.layer_combo.itemText(i) for i in range(w.spatial_row.layer_combo.count())
    ]
    assert choices == [FROM_FILE, "opened"]
    w.spatial_row.layer_combo.setCurrentText("opened")
    worker = w.load()
    _wait(qtbot, worker)
    qtbot.waitUntil(lambda: "Loaded" in w.status.text(), timeout=10_000)
    assert len(viewer.layers) == 1, "data taken from a layer is not added twice"
    assert "750 cells" in w.summary.text()


def test_bad_file_is_reported(viewer_widget, qtbot, tmp_path):
    viewer, w = viewer_widget
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not hdf5")
    w.spatial_row.path.setText(str(bad))
    errors = []
    worker = w.load()
    worker.errored.connect(errors.append)
    _wait(qtbot, worker)
    qtbot.waitUntil(lambda: w.status.text().startswith("Error"), timeout=10_000)
    assert not errors, "a bad file is the user's to fix: a notification, not a crash"
    assert "cannot read spatial file" in w.status.text()
    assert len(viewer.layers) == 0 and viewer_model(viewer).spatial is None


def test_summary_text(merfish):
    ref, spa = merfish
    spa.var_names = [g.upper() for g in spa.var_names]
    text = data_summary(ref, spa, "cell_type", None)
    assert "Shared genes: 134" in text, "gene names match case-insensitively"
    assert data_summary(None, None, None, None) == "Nothing loaded yet."


def _write_pair(tmp_path, merfish):
    ref, spa = merfish
    ref.obsm["X_umap"] = np.random.default_rng(0).random((ref.n_obs, 2)).astype(np.float32)
    x = spa.obsm["spatial"][:, 0]
    spa.obs["slice"] = pd.Categorical(np.where(x < np.median(x), "slice1", "slice2"))
    paths = tmp_path / "ref.h5ad", tmp_path / "sp.h5ad"
    ref.write_h5ad(paths[0])
    spa.write_h5ad(paths[1])
    return paths


def _load(qtbot, w):
    worker = w.load()
    _wait(qtbot, worker)
    qtbot.waitUntil(lambda: w.status.text() == "Loaded.", timeout=60_000)
    _wait(qtbot, w.umap_worker)
    qtbot.waitUntil(lambda: w.reference_points is not None, timeout=60_000)


def test_load_again_replaces_its_layers(viewer_widget, qtbot, tmp_path, merfish):
    """Issue 10 (8): pressing Load again duplicated every layer (``spatial [slice1] [1]``,
    ``reference UMAP [1]``); layers are now replaced, found by metadata, not by name."""
    from napari_spatial_impute.plugin.reader import read_h5ad_layers

    viewer, w = viewer_widget
    ref_path, sp_path = _write_pair(tmp_path, merfish)
    w.reference_row.path.setText(str(ref_path))
    w.spatial_row.path.setText(str(sp_path))
    _load(qtbot, w)
    # a "slice" column holds sections: one layer, the slice (also its FOV) a feature
    names = ["spatial", "reference UMAP"]
    names_opened = ["sp"]
    assert [layer.name for layer in viewer.layers] == names
    assert set(viewer.layers[0].features["slice"].astype(str)) == {"slice1", "slice2"}
    first = list(viewer.layers)
    model = viewer_model(viewer)

    _load(qtbot, w)
    assert [layer.name for layer in viewer.layers] == names
    assert all(layer not in first for layer in viewer.layers)
    held = [plugin_meta(layer)["adata"] for layer in viewer.layers]
    assert held[0] is model.spatial and held[1] is model.reference

    # renamed by the user, then opened again with File > Open: no copy is added (issue 24, 10a)
    viewer.layers[0].name = "my tissue"
    shown = list(viewer.layers)
    assert read_h5ad_layers(str(sp_path)) == [(None,)]
    assert list(viewer.layers) == shown
    # changed on disk since: File > Open shows it as it is now, in place of Load's layers
    st = sp_path.stat()
    os.utime(sp_path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    for data, kw, _ in read_h5ad_layers(str(sp_path)):
        viewer.add_points(data, **kw)
    assert [layer.name for layer in viewer.layers] == ["reference UMAP", *names_opened]
    choices = [
        w.spatial_row.layer_combo.itemText(i) for i in range(w.spatial_row.layer_combo.count())
    ]
    assert choices == [FROM_FILE, "sp"]
    # the next Load still replaces them, as they hold that file
    _load(qtbot, w)
    assert [layer.name for layer in viewer.layers] == names


def test_layer_choice_survives_renaming(viewer_widget, qtbot):
    viewer, w = viewer_widget
    from napari_spatial_impute.io.datasets import load_merfish_hypothalamus
    from napari_spatial_impute.viz.layers import spatial_layers

    _, spa = load_merfish_hypothalamus()
    for data, kw, _ in spatial_layers(spa, name="opened"):
        viewer.add_points(data, **kw)
    w.spatial_row.layer_combo.setCurrentIndex(1)
    viewer.layers[0].name = "renamed"
    assert w._chosen(w.spatial_row) is spa, "the data is found by identity, not by the old name"


def test_per_cell_fov_key_is_refused_at_once(viewer_widget, qtbot, merfish):
    """Issue 12: choosing a numeric per-cell column as FOV key made one layer per value (a 13 min
    freeze at 3,962 values); it is refused with one line and the earlier FOV key stays (FOVs
    are a feature now, but a per-cell column would still make thousands of outlines)."""
    viewer, w = viewer_widget
    _, spa = merfish
    spa.obs["fov"] = pd.Categorical(np.where(np.arange(spa.n_obs) % 2 == 0, "a", "b"))
    spa.obs["total"] = np.asarray(spa.X.sum(1)).ravel() + np.linspace(0, 0.5, spa.n_obs)
    model = viewer_model(viewer)
    model.set_spatial(spa)
    w._on_loaded((None, spa, False, True))
    assert model.fov_key == "fov" and len(viewer.layers) == 1
    before = viewer.layers[0]
    _choose(qtbot, w, w.fov_combo, "total")
    assert "per-cell measurement" in w.status.text()
    assert model.fov_key == "fov" and w.fov_combo.currentText() == "fov"
    assert list(viewer.layers) == [before]  # refused before any layer was built


def _csr_array_reference(n_obs: int = 300, n_vars: int = 60) -> ad.AnnData:
    """A seeded reference as the seed-shape benchmark writes it: counts in a scipy
    ``csr_array`` (not ``csr_matrix``), clusters, no ``X_umap``."""
    rng = np.random.default_rng(0)
    X = sp.csr_array(rng.poisson(0.8, size=(n_obs, n_vars)).astype(np.float32))
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(rng.choice(["a", "b", "c"], n_obs))},
        index=[f"c{i}" for i in range(n_obs)],
    )
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_vars)]))


def test_reference_umap_of_a_csr_array(viewer_widget, qtbot, monkeypatch):
    """Issue 24 (2): "UMAP failed: 'csr_array' object has no attribute 'getnnz'" (scanpy 1.11,
    scipy 1.17), no reference layer; the UMAP is computed and the reference shown. The seed's
    reference (9,448 cells) takes the approximate kNN search (pynndescent, whose graph scanpy
    failed on): taken here for a few cells too."""
    from napari_spatial_impute.viz import layers

    monkeypatch.setattr(layers, "EXACT_KNN_CELLS", 0, raising=False)
    viewer, w = viewer_widget
    ref = _csr_array_reference()
    w._on_loaded((ref, None, True, None))
    _wait(qtbot, w.umap_worker)
    qtbot.waitUntil(
        lambda: w.reference_points is not None or "failed" in w.status.text(), timeout=120_000
    )
    assert "failed" not in w.status.text()
    assert w.reference_points is not None and len(w.reference_points.data) == 300
    assert ref.obsm["X_umap"].shape == (300, 2) and np.isfinite(ref.obsm["X_umap"]).all()
    assert isinstance(ref.X, sp.csr_array), "the user's matrix is left as it was"


def test_key_changes_work_off_the_main_thread_and_the_latest_wins(
    viewer_widget, qtbot, merfish, monkeypatch
):
    """Issue 24: choosing a sample or FOV column froze the window 4.9-13.6 s at the seed's
    shape (the check, the layers' data and the summary on the main thread). The check and the
    layer data are made in a worker; a choice made while an earlier one still runs supersedes
    it (the earlier one's result is never applied); the main thread refills the layers."""
    import threading

    from napari_spatial_impute.plugin.widgets import load_widget

    viewer, w = viewer_widget
    _, spa = merfish
    x = spa.obsm["spatial"][:, 0]
    spa.obs["halves"] = pd.Categorical(np.where(x < np.median(x), "s1", "s2"))
    spa.obs["thirds"] = pd.Categorical(np.digitize(x, np.quantile(x, [1 / 3, 2 / 3])).astype(str))
    model = viewer_model(viewer)
    model.set_spatial(spa)
    w._on_loaded((None, spa, False, True))
    assert [lay.name for lay in viewer.layers] == ["spatial"]

    threads: list[threading.Thread] = []
    gate = threading.Event()
    real_check, real_build = load_widget.find_sample_key, w._spatial_layer_data

    def check(*args, **kwargs):
        threads.append(threading.current_thread())
        if len(threads) == 1:  # the first choice still runs when the second is made (or, with
            gate.wait(10)  # no free thread in the pool, is held a while: it is superseded anyway)
        return real_check(*args, **kwargs)

    def build(*args, **kwargs):
        threads.append(threading.current_thread())
        return real_build(*args, **kwargs)

    applied = []
    real_show = w._show_layer_data
    monkeypatch.setattr(load_widget, "find_sample_key", check)
    monkeypatch.setattr(w, "_spatial_layer_data", build)
    monkeypatch.setattr(w, "_show_layer_data", lambda data: applied.append(data) or real_show(data))
    w.sample_combo.setCurrentText("halves")
    first = w.key_worker
    w.sample_combo.setCurrentText("thirds")
    qtbot.waitUntil(lambda: model.sample_key == "thirds", timeout=60_000)
    (layer,) = viewer.layers
    assert layer.name == "spatial" and plugin_meta(layer)["sample_key"] == "thirds"
    gate.set()  # the superseded choice now finishes: nothing of it is applied
    qtbot.waitUntil(lambda: not w.busy and not first.is_running, timeout=60_000)
    assert model.sample_key == "thirds" and len(applied) == 1
    assert list(viewer.layers) == [layer] and plugin_meta(layer)["sample_key"] == "thirds"
    assert len(threads) == 4 and threading.main_thread() not in threads
    # the FOV is a feature column: a FOV key change rebuilds no layer
    before = list(viewer.layers)
    _choose(qtbot, w, w.fov_combo, "halves")
    assert list(viewer.layers) == before and model.fov_key == "halves"
    assert all(plugin_meta(lay)["fov_key"] == "halves" for lay in viewer.layers)
    assert len(applied) == 1


def test_four_samples_are_one_layer_and_a_sample_key_change_refills_it(
    viewer_widget, qtbot, merfish
):
    """Issue 24: the spatial data were one layer per sample ("spatial · s0", ...); a sample key
    change removed and added layers (napari collects garbage for each removal: ~1 s of freeze).
    At four sections sharing coordinates: one layer, the layout in its coordinates; a sample key
    change refills that layer in place: no layer removed, none added."""
    from napari_spatial_impute.viz.sections import display_yx

    viewer, w = viewer_widget
    _, one = merfish
    parts = []
    for i in range(4):  # four sections imaged separately: the same coordinates
        part = one.copy()
        part.obs_names = [f"{c}-{i}" for c in one.obs_names]
        part.obs["section"] = f"s{i}"
        parts.append(part)
    spa = ad.concat(parts)
    spa.obs["section"] = spa.obs["section"].astype("category")
    spa.obs["half"] = pd.Categorical(np.where(spa.obs["section"].isin(["s0", "s1"]), "a", "b"))
    spa.obs["value"] = np.random.default_rng(0).random(spa.n_obs).astype(np.float32)
    model = viewer_model(viewer)
    model.set_spatial(spa)
    w._on_loaded((None, spa, False, True))
    assert model.sample_key == "section"
    (layer,) = w.spatial_layers
    assert list(viewer.layers) == [layer] and len(layer.data) == 4 * one.n_obs
    rows = plugin_meta(layer)["rows"]
    np.testing.assert_allclose(layer.data, display_yx(spa, rows, "section"))  # side by side
    assert layer.features["section"].nunique() == 4

    w.color_combo.setCurrentText("section")
    colours = {s: layer.face_color[layer.features["section"] == s][0] for s in ("s0", "s3")}
    assert not np.allclose(colours["s0"], colours["s3"])

    removed, inserted, painted = [], [], []
    viewer.layers.events.removed.connect(removed.append)
    viewer.layers.events.inserted.connect(inserted.append)
    layer.events.face_color.connect(painted.append)
    _choose(qtbot, w, w.sample_combo, "half")
    # the same column colours the reordered cells: no colour setter (each redraws every point)
    assert painted == []
    assert model.sample_key == "half" and w.spatial_layers == [layer]
    rows = plugin_meta(layer)["rows"]
    np.testing.assert_allclose(layer.data, display_yx(spa, rows, "half"))  # laid out anew
    assert list(layer.features["obs_name"]) == list(spa.obs_names[rows])
    for section, colour in colours.items():  # each cell keeps its section's colour
        np.testing.assert_allclose(
            layer.face_color[layer.features["section"] == section], [colour] * one.n_obs
        )
    w.color_combo.setCurrentText("value")
    before = layer.face_color[np.argsort(plugin_meta(layer)["rows"])].copy()
    _choose(qtbot, w, w.sample_combo, "section")
    np.testing.assert_allclose(layer.face_color[np.argsort(plugin_meta(layer)["rows"])], before)
    _choose(qtbot, w, w.sample_combo, NONE)
    np.testing.assert_array_equal(layer.data, spa.obsm["spatial"][:, ::-1])  # all on top
    _choose(qtbot, w, w.sample_combo, "section")
    np.testing.assert_allclose(layer.data, display_yx(spa, plugin_meta(layer)["rows"], "section"))
    assert removed == [] and inserted == [], "a sample key change refills the one layer"
    assert list(viewer.layers) == [layer]
