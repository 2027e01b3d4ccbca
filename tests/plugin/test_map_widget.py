"""Map widget: real mappings of the bundled MERFISH pair in a napari thread worker."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.plugin.sync import viewer_model
from napari_spatial_impute.plugin.widgets.map_widget import MapWidget
from napari_spatial_impute.viz.layers import META_KEY, plugin_meta


@pytest.fixture
def widget(make_napari_viewer_proxy, qtbot, merfish):
    viewer = make_napari_viewer_proxy()
    ref, spa = merfish
    x = spa.obsm["spatial"][:, 0]
    spa.obs["fov"] = pd.Categorical(np.digitize(x, np.quantile(x, [0.25, 0.5, 0.75])).astype(str))
    spa.obs["sample"] = pd.Categorical(np.where(x < np.median(x), "left", "right"))
    model = viewer_model(viewer)
    model.set_reference(ref)
    model.set_spatial(spa)
    model.set_keys(cluster_key="cell_type", fov_key="fov")
    w = MapWidget(viewer)
    qtbot.addWidget(w)
    return viewer, w, model


def test_map_adds_one_predicted_layer_for_all_samples(widget, qtbot):
    """Issue 24: one most-likely-cluster layer for every sample (it was one per sample), the
    sample and FOV feature columns."""
    viewer, w, model = widget
    w.form.method.value = "tangram"
    w.form.epochs.value = 20
    assert w.run_button.isEnabled()
    epochs_seen = []
    worker = w.run()
    worker.yielded.connect(lambda batch: epochs_seen.extend(info.epoch for info in batch))
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: w.worker is None, timeout=5000)
    assert epochs_seen[-1] == 20
    assert w.progress.value() == 20
    assert len(w.plot.values) == 20 and np.all(np.isfinite(w.plot.values))
    result = model.result
    assert result is not None and result.n_obs == 750 and result.n_vars == 134
    assert result.uns["spatial_impute"]["params"]["epochs"] == 20
    assert result.uns["spatial_impute"]["fov_key"] == "fov"
    assert result.uns["spatial_impute"]["sample_key"] == "sample"  # found by its usual name
    (layer,) = viewer.layers  # one layer, both samples in it
    assert layer.name == "most likely cell_type" and len(layer.data) == 750
    feats = layer.features
    assert isinstance(feats["cell_type_predicted"].dtype, pd.CategoricalDtype)
    assert layer.face_color_mode == "cycle"
    md = plugin_meta(layer)
    assert md["adata"] is result and md["sample"] == "" and md["sample_key"] == "sample"
    # each point sits where its cell is (napari order y, x: samples apart in space stay put)
    rows = result.obs_names.get_indexer(feats["obs_name"].astype(str))
    np.testing.assert_array_equal(md["rows"], rows)
    np.testing.assert_allclose(layer.data, result.obsm["spatial"][rows][:, ::-1])
    # the sample and the FOV are feature columns
    for sample, fovs in (("left", {"0", "1"}), ("right", {"2", "3"})):
        assert set(feats["fov"][feats["sample"] == sample].astype(str)) == fovs
    assert "training score" in w.status.text()
    assert "all 20 epochs" in w.status.text()  # how the training ended
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()


def test_cancel_leaves_no_layers(widget, qtbot):
    viewer, w, model = widget
    w.form.method.value = "tangram"
    w.form.epochs.value = 100_000
    worker = w.run()
    with qtbot.waitSignal(worker.yielded, timeout=60_000):
        pass
    # listening before the cancel: a worker that stops at once emits finished before a
    # waitSignal entered afterwards connects (seen once in a clean-clone run)
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        w.cancel()
    qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)  # the widget's finished handler
    assert len(viewer.layers) == 0
    assert model.result is None
    assert w.progress.value() < 100_000
    assert "Cancelled" in w.status.text()
    assert w.run_button.isEnabled()


def test_engine_error_is_reported_and_adds_nothing(widget, qtbot):
    viewer, w, model = widget
    model.set_keys(cluster_key=None, fov_key="fov")
    w.form.mode.value = "clusters"  # needs a cluster key: the engine refuses
    w.form.method.value = "tangram"
    w.form.epochs.value = 5
    errors, returned = [], []
    # record through the widget's own handlers: they are connected before the worker starts,
    # whereas connecting to the worker after run() races a fast engine error
    on_returned, on_error = w._on_returned, w._on_error
    w._on_returned = lambda value: (returned.append(value), on_returned(value))
    w._on_error = lambda exc: (errors.append(exc), on_error(exc))
    assert w.run() is not None
    qtbot.waitUntil(
        lambda: w.worker is None, timeout=60_000
    )  # set by the widget's finished handler
    assert not errors, "bad input is reported, not raised as a crash"
    assert returned and "cluster key" in returned[0].message
    assert w.status.text().startswith("Error: clusters mode needs a cluster key")
    from napari.utils.notifications import notification_manager

    assert any(
        "clusters mode needs a cluster key" in str(n.message) for n in notification_manager.records
    )
    assert len(viewer.layers) == 0 and model.result is None


def test_gene_list_and_parameters(widget):
    _, w, _ = widget
    w.form.genes.value = "list"
    w.gene_list.value = "Gad1, Slc17a6 Sst"
    w.form.mode.value = "clusters"
    p = w.parameters()
    assert p["genes"] == ["Gad1", "Slc17a6", "Sst"]
    assert p["mode"] == "clusters" and p["cluster_key"] == "cell_type"
    assert w.gene_list.enabled and not w.form.n_markers.enabled
    assert p["engine"] == "auto"  # the fast path by size, by default
    w.form.engine.value = "lean"
    assert w.parameters()["engine"] == "lean"


def test_only_the_settings_of_the_map_that_runs_are_editable(widget):
    _, w, _ = widget
    tangram_only = ("epochs", "learning_rate", "engine", "density")
    # auto in cells mode is chosen from the data: it may train a Tangram map, so it keeps its
    # settings; the score plot waits for a Tangram map's epochs
    assert w.parameters()["method"] == "auto" and w.map_method() == "auto"
    assert all(w.settings_widgets[n].enabled for n in tangram_only)
    assert w.settings_widgets["uncertainty"].enabled and not w.plot.isVisibleTo(w)
    w.form.engine.value = "lean"
    assert w.parameters()["engine"] == "lean"
    w.form.mode.value = "clusters"  # a Tangram option: auto makes a Tangram map
    assert w.map_method() == "tangram"
    assert all(w.settings_widgets[n].enabled for n in tangram_only)
    # intervals are a cells-mode thing: hidden, and sent at the default
    assert not w.settings_widgets["uncertainty"].enabled and w.plot.isVisibleTo(w)
    w.form.mode.value = "cells"
    w.form.method.value = "tangram"  # a Tangram map in cells mode has intervals too
    assert w.map_method() == "tangram" and w.settings_widgets["epochs"].enabled
    assert w.settings_widgets["uncertainty"].enabled
    w.settings_widgets["uncertainty"].value = False
    assert w.parameters()["uncertainty"] is False
    w.form.method.value = "ensemble"  # nothing trained: the greyed-out engine is not sent
    assert not any(w.settings_widgets[n].enabled for n in tangram_only)
    assert w.parameters()["engine"] == "auto" and w.parameters()["method"] == "ensemble"
    assert w.settings_widgets["uncertainty"].enabled and not w.plot.isVisibleTo(w)


def test_default_run_chooses_the_map_with_a_busy_bar(widget, qtbot):
    """The default (auto) chooses the map on held-out training genes while a busy bar runs; the
    status then names the map made and the scores it was chosen on. On the bundled pair the
    ensemble wins, so nothing is trained (issue 15)."""
    viewer, w, model = widget
    ranges = []
    worker = w.run()
    ranges.append((w.progress.minimum(), w.progress.maximum()))
    assert "Choosing the map on held-out genes" in w.status.text()
    epochs_seen = []
    worker.yielded.connect(epochs_seen.append)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: model.result is not None, timeout=10_000)
    assert ranges == [(0, 0)] and epochs_seen == []
    assert (w.progress.minimum(), w.progress.maximum(), w.progress.value()) == (0, 1, 1)
    info = model.result.uns["spatial_impute"]
    assert info["params"]["method"] == "ensemble" and info["params"]["epochs_done"] == 0
    choice = info["map_choice"]
    assert choice["chosen"] == "ensemble" and not choice["warning"]
    scores = dict(zip(choice["candidates"], choice["inner_median_pearson"], strict=True))
    status = w.status.text()
    assert "ensemble map, training-gene score" in status
    assert "Map: ensemble, chosen on" in status
    assert f"median Pearson {scores['ensemble']:.3f} vs tangram {scores['tangram']:.3f}" in status
    assert f"size baseline {choice['size_baseline']:.3f}" in status
    assert "Warning" not in status
    assert "interval_90_halfwidth" in model.result.layers
    assert len(viewer.layers) >= 1


def _docked_on(viewer, ref, spa):
    """``(model, widget)``: a docked Map widget over ``ref`` and ``spa`` (cell_type clusters)."""
    model = viewer_model(viewer)
    model.set_reference(ref)
    model.set_spatial(spa)
    model.set_keys(cluster_key="cell_type", fov_key=None)
    w = MapWidget(viewer)
    viewer.window.add_dock_widget(w, name="Map")
    return model, w


def _notified(text: str, since: int) -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [
        str(n.message)
        for n in notification_manager.records[since:]
        if n.severity == NotificationSeverity.WARNING and text in str(n.message)
    ]


def test_weak_imputation_is_one_warning_per_run(widget, qtbot, monkeypatch):
    """A weak choice warns in the worker thread and is recorded in the result: the widget shows
    it once per run, from the result, and in its status. The run's other InputWarnings are
    shown once each too (napari 0.9.2 relays none of a worker's warnings)."""
    from napari.utils.notifications import notification_manager

    from napari_spatial_impute.core.maps import choose

    viewer, w, model = widget
    monkeypatch.setattr(choose, "WEAK_PEARSON", 1.0)  # every choice is weak now
    w.form.engine.value = "lean"  # a Tangram setting: the core warns when the ensemble is made
    for _ in range(2):
        since = len(notification_manager.records)
        w.run()
        qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
        warning = str(model.result.uns["spatial_impute"]["map_choice"]["warning"])
        assert warning.startswith("imputation is weak")
        assert _notified("imputation is weak", since) == [warning]
        assert f"Warning: {warning}" in w.status.text()
        assert model.result.uns["spatial_impute"]["params"]["method"] == "ensemble"
        assert len(_notified("auto chose the ensemble map", since)) == 1


def test_a_result_with_a_warning_notifies_once(widget, monkeypatch):
    """The result's map_choice warning: one notification per run, none when the run's warnings
    showed it already."""
    from _explore_data import merfish_with_fovs
    from napari.utils.notifications import notification_manager

    from napari_spatial_impute.plugin.widgets.map_widget import prepared_layers
    from napari_spatial_impute.plugin.workers import layers_of_result

    viewer, w, model = widget
    res = merfish_with_fovs()[2]
    text = "imputation is weak on these data: a test"
    res.uns["spatial_impute"]["map_choice"]["warning"] = text
    for shown, expected in ((set(), [text]), ({text}, [])):
        w._run.shown = shown
        since = len(notification_manager.records)
        w._on_returned(prepared_layers(layers_of_result(res.copy())))
        assert _notified(text, since) == expected
        assert f"Warning: {text}" in w.status.text()


def test_the_weak_warning_pattern_matches_the_core_text():
    """The worker silences the choice's weak warning by this pattern (the widget shows it)."""
    import re

    from napari_spatial_impute.core.maps.choose import MapChoice
    from napari_spatial_impute.plugin.workers import WEAK_WARNING

    choice = MapChoice("ensemble", {"ensemble": 0.05, "tangram": 0.01}, size_baseline=0.02)
    assert choice.weak() and re.match(WEAK_WARNING, choice.weak(), re.IGNORECASE)


def test_a_chosen_tangram_map_turns_the_busy_bar_into_epochs(widget):
    """auto runs a busy bar; when the chosen Tangram map trains, its epochs fill the bar."""
    from napari_spatial_impute.core.engine.mapper import EpochInfo

    viewer, w, model = widget
    w._run.epochs = 40
    w._busy_bar("Choosing the map on held-out genes...")
    assert not w.plot.isVisibleTo(w)
    w._on_epoch([EpochInfo(e, 40, {"main_loss": 0.1 * e}) for e in (1, 2, 3)])
    assert (w.progress.minimum(), w.progress.maximum(), w.progress.value()) == (0, 40, 3)
    assert w.plot.isVisibleTo(w) and len(w.plot.values) == 3
    assert w.status.text().startswith("epoch 3 / 40")
    w._run.close_pbar()


def test_run_disabled_without_data(make_napari_viewer_proxy, qtbot):
    viewer = make_napari_viewer_proxy()
    w = MapWidget(viewer)
    qtbot.addWidget(w)
    assert not w.run_button.isEnabled()
    assert w.run() is None
    assert "Load" in w.data_label.text()


@pytest.mark.skipif(
    os.environ.get("QT_QPA_PLATFORM") == "offscreen", reason="needs a real (Xvfb) display to render"
)
def test_result_layers_are_drawn(make_napari_viewer, qtbot, merfish):
    viewer = make_napari_viewer(show=True)
    ref, spa = merfish
    model = viewer_model(viewer)
    model.set_reference(ref)
    model.set_spatial(spa)
    model.set_keys(cluster_key="cell_type", fov_key=None)
    w = MapWidget(viewer)
    qtbot.addWidget(w)
    w.form.method.value = "tangram"
    w.form.epochs.value = 20
    worker = w.run()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert len(viewer.layers) == 1 and META_KEY in viewer.layers[0].metadata
    viewer.reset_view()
    img = viewer.screenshot(canvas_only=True, flash=False)
    bg = img[0, 0, :3].astype(int)
    drawn = np.abs(img[..., :3].astype(int) - bg).sum(axis=-1) > 30
    assert drawn.mean() > 0.01, "no points were drawn"
    # several category colours are visible (a categorical colour cycle, not one colour)
    colours = {tuple(c) for c in img[drawn][:, :3] // 32}
    assert len(colours) >= 4


def test_iter_mapping_generator(merfish):
    import threading

    from napari_spatial_impute import InputError
    from napari_spatial_impute.plugin.workers import Failed, guarded, iter_mapping

    ref, spa = merfish
    gen = iter_mapping(
        ref,
        spa,
        threading.Event(),
        lambda r: r.params["epochs"],
        interval=0,
        method="tangram",
        epochs=7,
        cluster_key="cell_type",
    )
    epochs = []
    with pytest.raises(StopIteration) as stop:
        while True:
            batch = next(gen)
            assert len(batch) == 1, "interval=0 yields each epoch on its own"
            epochs.append(batch[0].epoch)
    assert epochs == list(range(1, 8)) and stop.value.value == 7

    cancel = threading.Event()
    gen = iter_mapping(ref, spa, cancel, method="tangram", epochs=10_000)
    next(gen)
    cancel.set()
    with pytest.raises(StopIteration) as stop:
        for _ in range(10_000):
            next(gen)
    assert stop.value.value is None, "a cancelled run returns nothing"

    with pytest.raises(InputError):
        list(iter_mapping(ref, spa, threading.Event(), mode="clusters", epochs=3))
    gen = guarded(iter_mapping(ref, spa, threading.Event(), mode="clusters", epochs=3))
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert isinstance(stop.value.value, Failed) and "cluster key" in stop.value.value.message


# ---------------------------------------------------------------------------- issue 10: throttling
def test_throttled_sends_every_item_once_in_few_batches():
    """Every item once, in order, the first at once and the last never dropped; an interval
    longer than the run groups the rest into one list, ``0`` sends each alone (no clock)."""
    import queue
    import threading

    from napari_spatial_impute.plugin.workers import throttled

    done = object()
    q: queue.Queue = queue.Queue()
    first_sent = threading.Event()

    def produce():
        q.put(0)
        first_sent.wait(60)  # the first item is sent before any other is made
        for i in range(1, 5000):
            q.put(i)
        q.put(done)

    threading.Thread(target=produce, daemon=True).start()
    batches = []
    for batch in throttled(q, done, interval=1e6):
        batches.append(batch)
        first_sent.set()
    assert batches == [[0], list(range(1, 5000))]

    # a slow producer's items still come one by one
    q = queue.Queue()
    for i in range(3):
        q.put(i)
    q.put(done)
    assert list(throttled(q, done, interval=0)) == [[0], [1], [2]]


def test_fast_clusters_run_keeps_the_window_responsive(
    make_napari_viewer, qtbot, merfish, monkeypatch
):
    """Issue 10 (2): 2,000 fast clusters-mode epochs. One progress update per epoch nested
    napari's progress-bar event processing until RecursionErrors lost the result: the epochs
    come in throttled lists (here, with an interval longer than the run, exactly two: the first
    epoch at once, the rest at the end), and the result arrives. Issue 24: the heavy work (the
    mapping, the result AnnData, its layer data and the napari layers themselves) runs off the
    main thread; the main thread's handler gets layers ready to add. No clock: the window's
    stalls are measured in benchmarks/gui_responsiveness.py."""
    import threading

    from napari.layers import Points

    from napari_spatial_impute.plugin import workers
    from napari_spatial_impute.plugin.widgets import map_widget

    viewer = make_napari_viewer()
    model, w = _docked_on(viewer, *merfish)
    monkeypatch.setattr(workers, "UPDATE_INTERVAL", 1e6)
    main = threading.main_thread()
    threads: dict[str, set] = {}

    def on_thread(name, func):
        def run(*args, **kwargs):
            threads.setdefault(name, set()).add(threading.current_thread())
            return func(*args, **kwargs)

        return run

    monkeypatch.setattr(workers, "map_cells_to_space", on_thread("map", workers.map_cells_to_space))
    monkeypatch.setattr(
        workers, "layers_of_result", on_thread("layer data", workers.layers_of_result)
    )
    monkeypatch.setattr(map_widget, "Points", on_thread("layers", Points))
    w.form.mode.value = "clusters"
    w.form.method.value = "tangram"
    w.form.epochs.value = 2000
    w.settings_widgets["tol"].value = 0  # every epoch (no plateau stop): 2,000 are counted
    batches, returned = [], []
    on_epoch, on_returned = w._on_epoch, w._on_returned
    w._on_epoch = lambda batch: (batches.append(len(batch)), on_epoch(batch))
    w._on_returned = lambda value: (returned.append(value), on_returned(value))
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=300_000)

    assert returned, "the result reached the widget"
    assert [layer.name for layer in viewer.layers] == ["most likely cell_type"]
    assert (
        model.result is not None and model.result.uns["spatial_impute"]["params"]["epochs"] == 2000
    )
    assert "training score" in w.status.text()
    assert w.progress.value() == 2000 and len(w.plot.values) == 2000
    assert batches == [1, 1999], "the first epoch at once, the others in one throttled list"
    assert set(threads) == {"map", "layer data", "layers"}
    assert all(main not in seen for seen in threads.values()), threads
    adata, layers = returned[0]
    assert adata is model.result
    assert [type(layer) for layer in layers] == [Points] and layers[0] is viewer.layers[0]


def test_failing_layers_do_not_lose_the_result(widget, qtbot, monkeypatch):
    """Issue 10: a finished mapping was dropped without a word when adding its layers failed."""
    from napari.utils.notifications import notification_manager

    viewer, w, model = widget

    def broken(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("napari_spatial_impute.plugin.widgets.map_widget.Points", broken)
    w.form.method.value = "tangram"
    w.form.epochs.value = 5
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert w.status.text().startswith(
        "Error: the mapping finished but its layers could not be added"
    )
    assert "result is kept" in w.status.text()
    assert model.result is not None and model.result.n_obs == 750
    assert any("could not be added" in str(n.message) for n in notification_manager.records)


def test_rerun_replaces_its_own_layers_only(widget, qtbot):
    """Layers are found by metadata: a second run replaces the first run's layers (not by name),
    and a result layer this widget did not make (e.g. opened from a file) is left alone."""
    from napari_spatial_impute.viz.layers import spatial_layers

    viewer, w, model = widget
    w.form.method.value = "tangram"
    w.form.epochs.value = 5
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    first = list(viewer.layers)
    assert len(first) == 1  # one layer for both samples
    first[0].name = "renamed by the user"
    opened = model.result.copy()
    data, kw, _ = spatial_layers(opened, name="opened")[0]
    viewer.add_points(data, **kw)
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert all(layer not in viewer.layers for layer in first)
    assert sum(plugin_meta(layer)["adata"] is opened for layer in viewer.layers) == 1
    assert sum(plugin_meta(layer)["adata"] is model.result for layer in viewer.layers) == 1
    assert "Replaced 1 layer of the previous run" in w.status.text()


def _start_long_run(qtbot, w):
    w.form.method.value = "tangram"
    w.form.epochs.value = 100_000
    worker = w.run()
    with qtbot.waitSignal(worker.yielded, timeout=60_000):
        pass
    return worker, w._run.cancel


@pytest.mark.parametrize("how", ["dock close button", "close", "delete"])
def test_closing_the_widget_cancels_its_run(make_napari_viewer, qtbot, merfish, how):
    """Issue 10: closing the Map widget during a run left the run going, with no way to stop it."""
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    ref, spa = merfish
    model = viewer_model(viewer)
    model.set_reference(ref)
    model.set_spatial(spa)
    model.set_keys(cluster_key="cell_type", fov_key=None)
    w = MapWidget(viewer)
    if how == "dock close button":
        viewer.window.add_dock_widget(w, name="Map")
    worker, cancel = _start_long_run(qtbot, w)
    if how == "dock close button":
        viewer.window.remove_dock_widget(w)  # what the dock's close button does
    elif how == "close":
        w.close()
    else:
        w.deleteLater()
        qtbot.wait(50)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)
    assert cancel.is_set()
    qtbot.wait(100)
    assert len(viewer.layers) == 0 and model.result is None
    assert any("Map widget was closed" in str(n.message) for n in notification_manager.records)


def test_hiding_the_dock_keeps_the_run(make_napari_viewer, qtbot, merfish):
    viewer = make_napari_viewer()
    ref, spa = merfish
    model = viewer_model(viewer)
    model.set_reference(ref)
    model.set_spatial(spa)
    w = MapWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Map")
    worker, cancel = _start_long_run(qtbot, w)
    dock.hide()
    qtbot.wait(200)
    assert not cancel.is_set() and worker.is_running
    w.cancel()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)


def test_input_warnings_are_shown(widget, qtbot):
    """Issue 10 (6): problems that do not stop a mapping are shown in the widget and as napari
    warnings when the run starts."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    viewer, w, model = widget
    qtbot.waitUntil(lambda: w.checked, timeout=30_000)  # checked in a worker (issue 24)
    assert not w.warnings_label.isVisibleTo(w) and w.warnings_label.text() == ""
    ref = model.reference
    ref.obs["n_counts"] = np.asarray(ref.X.sum(axis=1)).ravel() + 0.5  # a per-cell number
    model.set_keys(cluster_key="n_counts", fov_key="fov")
    qtbot.waitUntil(lambda: w.checked, timeout=30_000)
    assert w.warnings_label.isVisibleTo(w)
    assert "cluster key 'n_counts'" in w.warnings_label.text()
    spatial_is_reference = ref.copy()
    spatial_is_reference.obsm["spatial"] = np.random.default_rng(0).random((ref.n_obs, 2))
    model.set_spatial(spatial_is_reference)
    qtbot.waitUntil(lambda: w.checked, timeout=30_000)
    assert "reference's own cells" in w.warnings_label.text()
    n_before = len(notification_manager.records)
    worker = w.run()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        w.cancel()
    new = notification_manager.records[n_before:]
    warned = [str(n.message) for n in new if n.severity == NotificationSeverity.WARNING]
    assert any("reference's own cells" in m for m in warned)
    assert any("cluster key 'n_counts'" in m for m in warned)
    model.set_keys(cluster_key="cell_type", fov_key="fov")
    model.set_spatial(None)
    qtbot.waitUntil(lambda: w.checked, timeout=30_000)
    assert not w.warnings_label.isVisibleTo(w)


def test_quitting_the_worker_stops_the_engine(widget, qtbot):
    """napari's status bar cancels a task with ``worker.quit()``: the engine stops too."""
    import threading

    viewer, w, model = widget
    worker, cancel = _start_long_run(qtbot, w)
    worker.quit()
    qtbot.waitUntil(lambda: not worker.is_running and cancel.is_set(), timeout=30_000)
    qtbot.waitUntil(
        lambda: not any(t.name == "spatial-impute-mapping" for t in threading.enumerate()),
        timeout=30_000,
    )
    assert "Cancelled" in w.status.text() and len(viewer.layers) == 0 and model.result is None


def test_batches_are_mapped_one_by_one_into_a_file(widget, qtbot, tmp_path):
    """Batch key 'sample': each half maps on its own, the file is written, its layers shown."""
    import anndata as ad

    import napari_spatial_impute as nsi

    viewer, w, model = widget
    qtbot.waitUntil(lambda: w.checked, timeout=30_000)
    assert "sample" in w.batch_key.choices and "fov" in w.batch_key.choices
    assert "cell_type" not in w.batch_key.choices  # a reference column, not a spatial one
    w.batch_key.value = "sample"
    out = tmp_path / "batches.h5ad"
    assert w.run() is None  # no file chosen: refused with a word, nothing started
    assert "choose the file" in w.status.text()
    w.batch_out.value = str(out)
    seen = []
    worker = w.run()
    worker.yielded.connect(lambda items: seen.extend(p.name for p in items))
    with qtbot.waitSignal(worker.finished, timeout=240_000):
        pass
    qtbot.waitUntil(lambda: w.worker is None, timeout=5000)
    assert sorted(seen) == ["left", "right"]
    assert w.progress.value() == 2 and w.progress.maximum() == 2
    result = model.result
    assert result is not None and result.uns["spatial_impute"]["batch_key"] == "sample"
    written = ad.read_h5ad(out)
    np.testing.assert_array_equal(written.X, result.X)
    spa = model.spatial
    left = np.flatnonzero(spa.obs["sample"].to_numpy() == "left")
    alone = result_to_anndata(
        nsi.map_cells_to_space(model.reference, spa[left].copy(), **w.parameters())
    )
    np.testing.assert_allclose(written.X[left], alone.X, rtol=1e-6, atol=1e-7)
    assert "2 of 2 batches mapped" in w.status.text()
    assert [layer.name for layer in viewer.layers] == ["most likely cell_type"]


def test_batch_status_names_the_workers_the_run_will_have(widget, qtbot, tmp_path, monkeypatch):
    """64 workers asked for 2 batches: the status says how many the run will really start."""
    from napari_spatial_impute._errors import InputError
    from napari_spatial_impute.core.cluster import local_workers
    from napari_spatial_impute.plugin.widgets import map_widget

    def stopped(*args, **kwargs):
        raise InputError("stopped before any batch")
        yield  # a generator, as the real one

    monkeypatch.setattr(map_widget, "iter_batch_mapping", stopped)
    viewer, w, model = widget
    qtbot.waitUntil(lambda: w.checked, timeout=30_000)
    w.batch_key.value = "sample"
    w.batch_out.value = str(tmp_path / "batches.h5ad")
    w.batch_workers.value = 64
    worker = w.run()
    n = local_workers(64, 2)[0]
    assert f"on {n} Dask workers (workers 64 lowered to {n})" in w.status.text()
    assert worker is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert "stopped before any batch" in w.status.text()


# ---------------------------------------------------------------------------- issue 24
def _store_viewer(tmp_path, make_napari_viewer_proxy, qtbot):
    """A Map widget over a small synthetic store's cells (reference and spatial loaded)."""
    import warnings

    from _data import make_store
    from napari_spatial_impute.io.sdata import read_spatial

    path, ref = make_store(tmp_path / "cells.zarr")
    viewer = make_napari_viewer_proxy()
    model = viewer_model(viewer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.set_reference(ref)
        model.set_spatial(read_spatial(path))
    model.set_keys(cluster_key="cell_type", fov_key=None)
    w = MapWidget(viewer)
    qtbot.addWidget(w)
    w.form.method.value = "ensemble"
    return path, viewer, model, w


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_map_again_after_writing_to_the_store(tmp_path, make_napari_viewer_proxy, qtbot):
    """Issue 24 (3): Map, Write to store, then Map again did nothing (the finished store-write
    worker was still held as the mapping's worker), without a word."""
    import spatialdata as sd

    path, viewer, model, w = _store_viewer(tmp_path, make_napari_viewer_proxy, qtbot)
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None and model.result is not None, timeout=120_000)
    assert not w.store_writer.isHidden()
    w.store_writer.write()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    assert "spatial_impute" in sd.read_zarr(path).tables
    first = model.result
    assert w.run_button.isEnabled()
    assert w.run() is not None, "Map after a finished write starts a new mapping"
    qtbot.waitUntil(lambda: w.worker is None and model.result is not first, timeout=120_000)
    assert model.result is not None and "Done" in w.status.text()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_map_during_a_store_write_says_what_runs(
    tmp_path, make_napari_viewer_proxy, qtbot, monkeypatch
):
    """Issue 24 (3): Map while the results are being written says so, and works once written."""
    import threading

    from napari_spatial_impute.io import sdata_write

    path, viewer, model, w = _store_viewer(tmp_path, make_napari_viewer_proxy, qtbot)
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None and model.result is not None, timeout=120_000)
    release, entered = threading.Event(), threading.Event()
    write_table = sdata_write.write_table

    def held(*args, **kwargs):
        entered.set()
        release.wait(60)
        return write_table(*args, **kwargs)

    monkeypatch.setattr(sdata_write, "write_table", held)
    w.store_writer.write()
    qtbot.waitUntil(entered.is_set, timeout=30_000)
    assert w.run() is None
    assert "writing the results to the store" in w.status.text().lower()
    release.set()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)


def _batch_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "spatial-impute-batches"]


@pytest.mark.parametrize("how", ["viewer", "widget", "quit"])
def test_closing_stops_a_batched_write(make_napari_viewer, qtbot, merfish, tmp_path, how):
    """Issue 24 (10e): closing the viewer during a batched run said "cancelled" but the batch
    went on mapping and writing (a 1 GB temporary file left). The cancel reaches the batch's
    mapping and the writer: the thread ends, the temporary file is removed and an earlier output
    is left as it was."""
    viewer = make_napari_viewer()
    ref, spa = merfish
    x = spa.obsm["spatial"][:, 0]
    spa.obs["sample"] = pd.Categorical(np.where(x < np.median(x), "left", "right"))
    model, w = _docked_on(viewer, ref, spa)
    qtbot.waitUntil(lambda: w.checked, timeout=30_000)
    out = tmp_path / "atlas.h5ad"
    out.write_bytes(b"an earlier result")
    w.batch_key.value = "sample"
    w.batch_out.value = str(out)
    w.form.method.value = "tangram"
    w.form.epochs.value = 1_000_000  # the first batch maps for a long time
    w.settings_widgets["tol"].value = 0  # no plateau stop
    assert w.run() is not None
    cancel = w._run.cancel
    # the run is writing: its temporary file is there
    qtbot.waitUntil(
        lambda: any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), timeout=60_000
    )
    if how == "viewer":
        viewer.close()
    elif how == "widget":
        viewer.window.remove_dock_widget(w)  # the dock's close button
    else:  # what napari's quitting calls (QApplication.aboutToQuit): it waits for the end
        w._run.end_on_quit()
        assert not _batch_threads() and w._run.ended.is_set()
    assert cancel.is_set()
    qtbot.waitUntil(lambda: not _batch_threads(), timeout=60_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas.h5ad"], "no temporary file left"
    assert out.read_bytes() == b"an earlier result"


def test_input_checks_run_off_the_main_thread(widget, qtbot, monkeypatch):
    """Issue 24: the input warnings and batch keys (0.6 s and 0.3 s at 10^6 cells) were
    computed on the main thread at each data change, at Map's click and again at its end. They
    are checked in a worker when the data or keys change, and not again for a run."""
    import threading

    from napari_spatial_impute.plugin.widgets import map_widget

    viewer, w, model = widget
    qtbot.waitUntil(lambda: w.checked, timeout=30_000)
    seen = []
    checks = map_widget.input_warnings

    def recorded(*args, **kwargs):
        seen.append(threading.current_thread())
        return checks(*args, **kwargs)

    monkeypatch.setattr(map_widget, "input_warnings", recorded)
    w.form.method.value = "ensemble"
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None and model.result is not None, timeout=120_000)
    assert seen == [], "no check at Map's click or end: the data did not change"
    model.set_keys(cluster_key=None, fov_key="fov")  # another cluster key: checked again
    assert not w.checked
    qtbot.waitUntil(lambda: w.checked, timeout=30_000)
    assert len(seen) == 1 and seen[0] is not threading.main_thread()
