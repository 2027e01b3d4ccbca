"""Exploring whole sections in a shown viewer: the plugin's widgets, bare napari, napari-spatialdata.

The scenarios of ``gui_responsiveness.py --scenario seed|section1m`` (issue 12, "Numbers") live
here, and so do the two peers, each run in its own process so that its resident memory and GL
state are its own:

* ``plugin`` (in the benchmark's process): the Load widget draws the spatial data
  (``LoadWidget.show_spatial`` after the shared model got the data and keys), the Map widget maps
  in a worker (``MapWidget.run``), the Explore widget shows a gene, switches genes, shows a
  cluster probability, the next one, the most likely cluster, a gene with its interval width
  beside, (``--key-change``) changes the Load widget's sample key and goes to a FOV with the
  other FOVs dimmed;
* ``bare`` (``python explore_sections.py bare --input X.pkl``): the same layers (same points,
  features, translate and drawing options, captured from the plugin's layers) added with napari's
  public API, and the gene switch done with public setters (the same RGBA array into
  ``face_color`` when the plugin's layers colour directly, else features, face_color column and
  contrast limits): the floor any plugin on napari pays;
* ``spatialdata`` (``/work/venv-sd/bin/python explore_sections.py spatialdata --input X.npz``):
  napari-spatialdata's ``Interactive`` on a SpatialData object with the same cells as circles
  and a table with the shown genes, colouring through its View widget's lists as a click does.

Every action is timed three ways: wall time until the layers are updated (waiting for the worker
when it is asynchronous), the next frame (``QApplication.processEvents()`` then a synchronous
``repaint()`` of the main window; the vispy draws inside it, and those inside the action, are
counted and timed separately: napari paints synchronously while a new layer's controls are
shown), and the longest event-loop stall (``gui_responsiveness.Heartbeat``, a 10 ms QTimer):
inside the action (``stall_in_action_s``) and the longest heartbeat gap touching it, whole
(``max_stall_s``, which can run on into the forced frame). Resident memory (psutil RSS) and the
number of layers follow each step.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Sizes of the scenarios (``seed_shape.make_pair`` arguments). ``section1m`` keeps the result
#: (cells x reference genes, float32) at 1.6 GB: 10^6 x 2,000 genes would be 8 GB beside napari.
SCENARIOS: dict[str, dict[str, int]] = {
    "seed": {
        "n_cells": 40_864,
        "n_fovs": 140,
        "n_samples": 4,
        "n_reference": 9_448,
        "n_genes": 2_000,
        "n_panel": 132,
    },
    "section1m": {
        "n_cells": 1_000_000,
        "n_fovs": 500,
        "n_samples": 1,
        "n_reference": 3_000,
        "n_genes": 400,
        "n_panel": 132,
    },
}

WINDOW = (1920, 1080)
#: Objects kept alive until the peer process exits.
_KEEP: list[Any] = []


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _now() -> float:
    return time.perf_counter()


class Meter:
    """Times actions in a shown viewer: wall time, next frame, longest stall, layers, RSS."""

    def __init__(self, viewer: Any, app: Any, interval_ms: int = 10) -> None:
        from gui_responsiveness import Heartbeat

        self.viewer = viewer
        self.app = app
        self.qt_window = viewer.window._qt_window
        self.hb = Heartbeat(interval_ms)
        self.rows: list[dict[str, Any]] = []
        self._draw_t0: float | None = None
        self.draws: list[tuple[float, float]] = []  # (start, duration) of each vispy draw
        canvas = viewer.window._qt_viewer.canvas._scene_canvas
        canvas.events.draw.connect(self._draw_start, position="first")
        canvas.events.draw.connect(self._draw_end, position="last")
        self.canvas = canvas
        #: Where ``action`` writes a cProfile of the steps whose key is in ``profile_keys``.
        self.profile_dir: Path | None = None
        self.profile_keys: set[str] = set()
        self.profile_prefix = ""

    def _draw_start(self, event: Any = None) -> None:
        self._draw_t0 = _now()

    def _draw_end(self, event: Any = None) -> None:
        if self._draw_t0 is not None:
            self.draws.append((self._draw_t0, _now() - self._draw_t0))
            self._draw_t0 = None

    def spin(self, seconds: float) -> None:
        t0 = _now()
        while _now() - t0 < seconds:
            self.app.processEvents()
            time.sleep(0.002)

    def wait(self, cond: Any, timeout: float) -> None:
        t0 = _now()
        while not cond():
            self.app.processEvents()
            time.sleep(0.001)
            if _now() - t0 > timeout:
                raise TimeoutError("timed out waiting for the GUI")

    def frame(self) -> dict[str, Any]:
        """Force the next frame: process pending events, then repaint the window synchronously."""
        n0 = len(self.draws)
        t0 = _now()
        self.app.processEvents()
        self.qt_window.repaint()
        dt = _now() - t0
        draws = self.draws[n0:]
        return {
            "frame_s": dt,
            "n_draws": len(draws),
            "draw_s": float(sum(d for _, d in draws)),
        }

    def action(
        self,
        name: str,
        fn: Any,
        busy: Any = None,
        timeout: float = 3600,
        settle_s: float = 0.3,
        key: str = "",
    ) -> tuple[Any, dict[str, Any]]:
        """Run ``fn`` (then wait while ``busy()``), force a frame, record a row; returns both."""
        self.hb.phase = name
        prof = None
        if self.profile_dir is not None and key in self.profile_keys:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0 = _now()
        out = fn()
        returned = _now() - t0
        if busy is not None:
            self.wait(lambda: not busy(), timeout)
        t_done = _now()
        during = [d for t, d in self.draws if t >= t0]
        if prof is not None:
            prof.disable()
            self._dump_profile(prof, key)
        self.hb.phase = f"{name} [frame]"
        fr = self.frame()
        t_frame = _now()
        self.hb.phase = f"{name} [after]"
        self.spin(settle_s)
        self.hb.phase = "idle"
        row = {
            "key": key,
            "step": name,
            "wall_s": t_done - t0,
            "returned_s": returned,
            "action_n_draws": len(during),
            "action_draw_s": float(sum(during)),
            **fr,
            "n_layers": len(self.viewer.layers),
            "rss_mib": rss_mib(),
            "peak_rss_mib": _peak_rss_mib(),
            "_span": (t0, t_done, t_frame),
        }
        self.rows.append(row)
        return out, row

    def screenshot(self, path: Path) -> None:
        """Let the canvas settle, then save the whole window (its own heartbeat phase)."""
        self.hb.phase = "screenshot"
        self.spin(0.5)
        self.qt_window.grab().save(str(path))
        self.hb.phase = "idle"

    def _dump_profile(self, prof: Any, key: str) -> None:
        import io
        import pstats

        assert self.profile_dir is not None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        path = self.profile_dir / f"{self.profile_prefix}{key}.prof"
        prof.dump_stats(str(path))
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(40)
        path.with_suffix(".txt").write_text(buf.getvalue())

    def _longest_gap(self, a: float, b: float, clip: bool = False) -> tuple[float, int]:
        """The longest heartbeat gap (minus the interval) overlapping ``[a, b]``, and the ticks
        in ``[a, b]``. ``clip``: only the part of each gap inside ``[a, b]`` counts."""
        t = np.array([x for x, _ in self.hb.ticks])
        if len(t) < 2:
            return float("nan"), 0
        g0, g1 = t[:-1], t[1:]
        over = (g1 > a) & (g0 < b)
        if not over.any():
            return float("nan"), 0
        lo, hi = g0[over], g1[over]
        if clip:
            lo, hi = np.maximum(lo, a), np.minimum(hi, b)
        gaps = np.maximum(hi - lo - self.hb.interval, 0.0)
        return float(gaps.max()), int(((t >= a) & (t <= b)).sum())

    def finish(self) -> list[dict[str, Any]]:
        """Add each row's longest stalls, from the heartbeat.

        ``stall_in_action_s``: the longest time the event loop did not run inside the action
        (from its start until its layers were updated; a synchronous action is one stall as long
        as the action). ``max_stall_s``: the longest heartbeat gap touching the action, whole: it
        can run on into the forced frame when the loop only got round after the frame's draw
        (the frame's own stall is ``frame_stall_s``).
        """
        for row in self.rows:
            t0, t_done, t_frame = row.pop("_span")
            row["stall_in_action_s"], row["n_ticks"] = self._longest_gap(t0, t_done, clip=True)
            row["max_stall_s"], _ = self._longest_gap(t0, t_done)
            row["frame_stall_s"], _ = self._longest_gap(t_done, t_frame, clip=True)
        st = self.hb.stalls()
        idle = st.loc[st["phase"] == "idle", "stall_ms"].to_numpy()
        self.idle_max_stall_s = float(idle.max()) / 1000 if len(idle) else float("nan")
        return self.rows


def shown_viewer(title: str = "napari") -> tuple[Any, Any]:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title=title)
    viewer.window._qt_window.resize(*WINDOW)
    app = QApplication.instance()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)
    return viewer, app


def _camera(viewer: Any) -> Any:
    """``viewer.scene.camera`` (napari >= 0.9), else ``viewer.camera``."""
    return getattr(getattr(viewer, "scene", None), "camera", None) or viewer.camera


def canvas_info(viewer: Any) -> dict[str, Any]:
    qt = viewer.window._qt_window
    return {
        "window_px": [qt.width(), qt.height()],
        "canvas_px": list(viewer.window._qt_viewer.canvas._scene_canvas.size),
    }


def record_notifications() -> list[str]:
    """Collect napari notifications (the widgets turn their errors into notifications)."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def on(event: Any) -> None:
        n = getattr(event, "value", event)
        seen.append(f"{getattr(n, 'severity', '?')}: {getattr(n, 'message', n)}")

    notification_manager.notification_ready.connect(on)
    return seen


# --------------------------------------------------------------------------------------------
# the plugin


def _style_of(layer: Any) -> dict[str, Any]:
    return {
        "size": float(np.mean(layer.size)) if len(layer.size) else 1.0,
        "border_width": 0.0,
        "border_color": "transparent",
        "canvas_size_limits": tuple(layer.canvas_size_limits),
        "antialiasing": float(layer.antialiasing),
        "blending": str(layer.blending),
        "translate": np.asarray(layer.translate, dtype=float),
    }


def _capture(layers: list[Any], column_of: Any) -> list[dict[str, Any]]:
    """What the bare peer needs to add the same layers: data, features, colour, style."""
    out = []
    for layer in layers:
        col = column_of(layer)
        entry = {
            "name": layer.name,
            "data": np.asarray(layer.data),
            "features": layer.features,
            "style": _style_of(layer),
            "color_column": col,
            "rgba": np.asarray(layer.face_color, dtype=np.float32),
        }
        if col is not None and str(layer.face_color_mode) == "colormap":
            entry["colormap"] = getattr(layer.face_colormap, "name", "viridis")
            entry["contrast_limits"] = tuple(float(v) for v in layer.face_contrast_limits)
        out.append(entry)
    return out


def run_plugin(args: argparse.Namespace, sizes: dict[str, int], out_dir: Path) -> dict[str, Any]:
    """The plugin's widgets in a shown viewer; returns rows, metadata and the peers' inputs."""
    import seed_shape
    from common import log

    from napari_spatial_impute.plugin.sync import connect_model
    from napari_spatial_impute.plugin.widgets.explore_widget import ASYNC_CELLS, ExploreWidget
    from napari_spatial_impute.plugin.widgets.load_widget import LoadWidget
    from napari_spatial_impute.plugin.widgets.map_widget import MapWidget
    from napari_spatial_impute.viz.explore import cluster_names, gene_names, shared_genes
    from napari_spatial_impute.viz.layers import plugin_meta

    tag = args.scenario_tag
    meta: dict[str, Any] = {"sizes": dict(sizes), "async_cells_threshold": ASYNC_CELLS}
    t0 = _now()
    ref, spa = seed_shape.make_pair(**sizes, seed=0)
    meta["make_pair_s"] = _now() - t0
    meta["spatial_shape"] = list(spa.shape)
    meta["reference_shape"] = list(ref.shape)
    meta["n_fovs"] = int(spa.obs["fov"].nunique())
    meta["n_samples"] = int(spa.obs["sample"].nunique())
    log(
        f"[{tag}] data: spatial {spa.shape} in {meta['n_fovs']} FOVs / {meta['n_samples']} samples, "
        f"reference {ref.shape} ({meta['make_pair_s']:.1f} s); rss {rss_mib():.0f} MiB"
    )
    notes = record_notifications()
    viewer, app = shown_viewer(f"napari-spatial-impute {tag}")
    model = connect_model(viewer)
    load = LoadWidget(viewer)
    mapw = MapWidget(viewer)
    explore = ExploreWidget(viewer)
    # tabbed: stacked, the three docks ask for more height than 1080 pixels (the window grew
    # to 1397 px); the Explore tab is in front for the screenshots
    docks = [
        viewer.window.add_dock_widget(w, name=name, area="right", tabify=True)
        for w, name in ((load, "Load"), (mapw, "Map"), (explore, "Explore"))
    ]
    docks[-1].raise_()
    m = Meter(viewer, app, args.interval_ms)
    if getattr(args, "profile", None):
        m.profile_dir = out_dir / "profiles"
        m.profile_keys = set(args.profile)
        m.profile_prefix = f"gui_explore_{tag}_"
    m.hb.start()
    m.spin(0.5)
    m.hb.phase = "idle"
    m.spin(1.0)
    meta["rss_viewer_shown_mib"] = rss_mib()
    meta.update(canvas_info(viewer))
    captured: dict[str, Any] = {}

    # 1. load: the shared model gets the data and keys (as LoadWidget._on_loaded does after
    # reading the files), then the Load widget draws the spatial data
    def set_model() -> None:  # what the Load widget does with the data it read
        load._on_loaded((ref, spa, None, None))
        model.set_keys(cluster_key="cell_type", fov_key="fov", sample_key="sample")
        load._fill_keys()

    m.action("load: LoadWidget._on_loaded (model and key lists)", set_model, key="model")
    layers, row = m.action("load: LoadWidget.show_spatial", load.show_spatial, key="load")
    row["n_layers_added"] = len(layers)
    log(f"[{tag}] load: {row['wall_s']:.2f} s, frame {row['frame_s']:.2f} s")
    captured["load"] = _capture(layers, lambda layer: None)

    # 2. the mapping in a worker, through the Map widget
    meta["map_method"] = mapw.map_method()
    state: dict[str, Any] = {"error": None}

    def start() -> Any:
        worker = mapw.run()
        if worker is None:
            raise RuntimeError("the Map widget did not start (no data in the model?)")
        worker.errored.connect(lambda e: state.__setitem__("error", repr(e)))
        return worker

    _, row = m.action(
        "map: MapWidget.run (worker) until finished",
        start,
        busy=lambda: mapw.busy or mapw.worker is not None,
        timeout=args.timeout,
        key="map",
    )
    if state["error"] or model.result is None:
        raise RuntimeError(f"mapping failed: {state['error']}; {mapw.status.text()}")
    result = model.result
    meta["map_status"] = mapw.status.text()
    meta["result_shape"] = list(result.shape)
    meta["result_X_dtype"] = str(result.X.dtype)
    log(
        f"[{tag}] map: {row['wall_s']:.1f} s, longest stall computed later; "
        f"result {result.shape}; rss {row['rss_mib']:.0f} MiB"
    )

    # 3. the Explore widget
    shared = shared_genes(result)
    genes = [g for g in gene_names(result) if g in set(shared)][: 1 + args.switches]
    cluster = cluster_names(result)[0]
    meta["genes"] = genes
    meta["cluster"] = cluster
    busy = lambda: explore.busy  # noqa: E731

    def value_column(layer: Any) -> str:
        return str(plugin_meta(layer)["value"])

    shown, row = m.action(
        f"explore: show first gene ({genes[0]})",
        lambda: explore.show_gene(genes[0]),
        busy,
        key="gene",
    )
    gene_layers = [
        lay for lay in viewer.layers if plugin_meta(lay).get("kind") in ("imputed", "measured")
    ]
    row["n_gene_layers"] = len(gene_layers)
    row["async"] = shown == []
    n_gene = len(viewer.layers)
    captured["gene"] = _capture(gene_layers, value_column)
    shot_gene = out_dir / f"gui_explore_{tag}_gene.png"
    m.screenshot(shot_gene)
    log(f"[{tag}] first gene: {row['wall_s']:.2f} s, frame {row['frame_s']:.2f} s")
    switches = []
    for i, g in enumerate(genes[1:]):
        shown, row = m.action(
            f"explore: switch gene ({g})",
            lambda g=g: explore.show_gene(g),
            busy,
            key=f"switch{i + 1}",
        )
        row["async"] = shown == []
        row["n_gene_layers"] = len(
            [
                lay
                for lay in viewer.layers
                if plugin_meta(lay).get("kind") in ("imputed", "measured")
            ]
        )
        if len(viewer.layers) != n_gene:
            raise AssertionError(
                f"showing {g} changed the layer count from {n_gene} to {len(viewer.layers)}"
            )
        switches.append(
            _capture(
                [lay for lay in gene_layers if lay in viewer.layers],
                value_column,
            )
        )
        log(f"[{tag}] switch gene: {row['wall_s']:.2f} s, frame {row['frame_s']:.2f} s")
    captured["switches"] = switches
    shown, row = m.action(
        f"explore: show cluster probability ({cluster})",
        lambda: explore.show_cluster(cluster),
        busy,
        key="cluster",
    )
    row["async"] = shown == []
    captured["cluster"] = _capture(
        [lay for lay in viewer.layers if plugin_meta(lay).get("kind") == "probability"],
        value_column,
    )
    clusters = cluster_names(result)
    cluster2 = clusters[1] if len(clusters) > 1 else None
    meta["cluster2"] = cluster2
    if cluster2 is not None:
        shown, row = m.action(
            f"explore: show next cluster probability ({cluster2})",
            lambda: explore.show_cluster(cluster2),
            busy,
            key="cluster2",
        )
        row["async"] = shown == []
    shown, row = m.action(
        "explore: most likely cluster", lambda: explore.show_predicted(), busy, key="predicted"
    )
    row["async"] = shown == []
    level = explore.uncertainty.level()
    meta["interval_level"] = level
    if level is not None:
        explore.uncertainty.interval_check.setChecked(True)
        shown, row = m.action(
            f"explore: gene with interval width beside ({genes[0]}, {level}%)",
            lambda: explore.show_gene(genes[0]),
            busy,
            key="interval",
        )
        row["async"] = shown == []
        explore.uncertainty.interval_check.setChecked(False)
    # key changes in the Load widget (the 4.9-13.6 s freezes): the sample key off and
    # back on (the spatial layers are refilled), a wrong FOV column and back
    from napari_spatial_impute.plugin.widgets.load_widget import NONE

    load_busy = lambda: load.busy  # noqa: E731
    for i, (combo, text, what) in enumerate(
        (
            (load.sample_combo, NONE, "sample key: none"),
            (load.sample_combo, "sample", "sample key: sample"),
            (load.fov_combo, "sample", "FOV key: a wrong column (sample)"),
            (load.fov_combo, "fov", "FOV key: fov"),
        )
    ):
        _, row = m.action(
            f"load: {what}",
            lambda combo=combo, text=text: combo.setCurrentText(text),
            load_busy,
            key="keys" if i == 0 else f"keys{i + 1}",
        )
        row["status"] = load.status.text()
    explore.navigator.others.setCurrentText("dimmed")
    items = [
        explore.navigator.fov_list.item(i).text() for i in range(explore.navigator.fov_list.count())
    ]
    fov = items[len(items) // 2]
    meta["fov"] = fov
    _, row = m.action(
        f"explore: go to FOV {fov} (others dimmed)", lambda: explore.go_to_fov(fov), key="fov"
    )
    cam = _camera(viewer)
    captured["camera"] = {"center": tuple(cam.center), "zoom": float(cam.zoom)}
    shot_fov = out_dir / f"gui_explore_{tag}_fov.png"
    m.screenshot(shot_fov)
    log(f"[{tag}] go to FOV: {row['wall_s']:.2f} s, frame {row['frame_s']:.2f} s")
    m.hb.phase = "idle"
    m.spin(1.0)
    m.hb.stop()
    rows = m.finish()
    meta["idle_max_stall_s"] = m.idle_max_stall_s
    meta["layers_at_end"] = [f"{type(lay).__name__}: {lay.name}" for lay in viewer.layers]
    meta["point_size"] = float(explore.size_spin.value())
    meta["notifications"] = list(notes)
    meta["screenshots"] = [str(shot_gene), str(shot_fov)]
    # what the spatialdata peer needs: every cell where it is drawn, the shown values
    from napari_spatial_impute.viz.explore import values
    from napari_spatial_impute.viz.sections import display_yx

    try:
        yx = np.asarray(display_yx(result, None, "sample"), dtype=np.float32)
    except Exception:  # only a different layout, for the peer: fall back to the raw coordinates
        yx = np.asarray(result.obsm["spatial"], dtype=np.float32)[:, ::-1]
    captured["table"] = {
        "yx": yx,
        "genes": genes,
        "gene_values": np.stack([values(result, "imputed", g) for g in genes], axis=1),
        "cluster": cluster,
        "cluster_values": values(result, "probability", cluster),
        "fov_codes": np.asarray(result.obs["fov"].cat.codes, dtype=np.int32),
        "fov_categories": np.asarray([str(c) for c in result.obs["fov"].cat.categories], dtype=str),
        "point_size": meta["point_size"],
    }
    if cluster2 is not None:
        captured["table"]["cluster2"] = cluster2
        captured["table"]["cluster2_values"] = values(result, "probability", cluster2)
    predicted = _predicted_codes(result)
    if predicted is not None:
        captured["table"]["predicted_codes"], captured["table"]["predicted_categories"] = predicted
    if level is not None:
        from napari_spatial_impute.io.schema import halfwidths

        captured["table"]["interval_values"] = 2 * halfwidths(result, genes[0], level)
    viewer.close()
    app.processEvents()
    return {"rows": rows, "meta": meta, "captured": captured}


def _predicted_codes(result: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The most likely cluster of each cell as codes and categories (for the peer's table)."""
    from napari_spatial_impute.viz.explore import cluster_names, values

    names = cluster_names(result)
    if not names:
        return None
    probs = np.stack([values(result, "probability", c) for c in names], axis=1)
    return probs.argmax(axis=1).astype(np.int32), np.asarray(names, dtype=str)


# --------------------------------------------------------------------------------------------
# peers (each in its own process)


def idle_peer_viewer(title: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    """A peer's shown viewer with its heartbeat running through a second of idle time:
    ``(viewer, app, meter, meta)``, meta holding the resident memory and canvas size then."""
    viewer, app = shown_viewer(title)
    m = Meter(viewer, app)
    m.hb.start()
    m.spin(0.5)
    m.hb.phase = "idle"
    m.spin(0.5)
    return viewer, app, m, {"rss_viewer_shown_mib": rss_mib(), **canvas_info(viewer)}


def peer_bare(path: Path) -> dict[str, Any]:
    """Bare napari: the plugin's layers added with ``viewer.add_points``, a gene switch with setters."""
    with open(path, "rb") as fh:
        cap = pickle.load(fh)
    viewer, app, m, meta = idle_peer_viewer("bare napari")

    def add(entries: list[dict[str, Any]]) -> list[Any]:
        out = []
        for e in entries:
            kw: dict[str, Any] = dict(e["style"])
            if e["color_column"] is None:
                kw["face_color"] = "#b0b0b0"
            elif "contrast_limits" not in e:  # the plugin's direct colours: the same array
                kw["face_color"] = e["rgba"]
            else:
                kw.update(
                    face_color=e["color_column"],
                    face_colormap=e["colormap"],
                    face_contrast_limits=e["contrast_limits"],
                )
            out.append(viewer.add_points(e["data"], features=e["features"], name=e["name"], **kw))
        return out

    m.action("load: add_points (spatial layers)", lambda: add(cap["load"]), key="load")
    layers, _ = m.action(
        "show first gene: add_points (gene layers)", lambda: add(cap["gene"]), key="gene"
    )
    for i, entries in enumerate(cap["switches"]):

        def switch(entries: list[dict[str, Any]] = entries) -> None:
            for layer, e in zip(layers, entries, strict=True):
                if "contrast_limits" not in e:  # direct colours: one setter, as the plugin
                    layer.face_color = e["rgba"]
                    continue
                layer.features = e["features"]
                layer.face_color = e["color_column"]
                layer.face_contrast_limits = e["contrast_limits"]

        m.action(
            f"switch gene #{i + 1}: features + face_color + contrast limits",
            switch,
            key=f"switch{i + 1}",
        )

    m.action(
        "show cluster probability: add_points (probability layers)",
        lambda: add(cap["cluster"]),
        key="cluster",
    )

    def go() -> None:
        cam = _camera(viewer)
        cam.center = cap["camera"]["center"]
        cam.zoom = cap["camera"]["zoom"]

    m.action("go to FOV: camera center + zoom", go, key="fov")
    m.hb.stop()
    rows = m.finish()
    meta["idle_max_stall_s"] = m.idle_max_stall_s
    viewer.close()
    return {"rows": rows, "meta": meta}


def peer_spatialdata(path: Path) -> dict[str, Any]:
    """napari-spatialdata 0.7: circles + table, ``Interactive``, colouring by a var/obs column."""
    from importlib.metadata import version

    import anndata as ad
    import geopandas as gpd
    import pandas as pd
    from shapely import points as shapely_points
    from spatialdata import SpatialData
    from spatialdata.models import PointsModel, ShapesModel, TableModel

    z = np.load(path, allow_pickle=False)
    yx = z["yx"].astype(np.float64)
    n = len(yx)
    genes = [str(g) for g in z["genes"]]
    gv = z["gene_values"]
    cluster_col = f"{z['cluster']}_probability"
    meta: dict[str, Any] = {
        "versions": {
            m: version(m) for m in ("napari", "napari-spatialdata", "spatialdata", "anndata")
        },
        "n_cells": n,
    }
    t0 = _now()
    gdf = gpd.GeoDataFrame(
        {"radius": np.full(n, float(z["point_size"]) / 2)},
        geometry=shapely_points(yx[:, 1], yx[:, 0]),
    )
    circles = ShapesModel.parse(gdf)
    fov = pd.Categorical.from_codes(z["fov_codes"], categories=list(z["fov_categories"]))
    columns: dict[str, Any] = {
        "region": pd.Categorical(["cells"] * n),
        "cell_id": np.arange(n),
        "fov": fov,
        cluster_col: z["cluster_values"],
    }
    # the other actions of issue 24, where the plugin run captured them (older inputs lack them)
    extra = {
        "cluster2": f"{z['cluster2']}_probability" if "cluster2" in z else None,
        "predicted": "most_likely" if "predicted_codes" in z else None,
        "interval": f"{genes[0]}_interval_width" if "interval_values" in z else None,
    }
    if extra["cluster2"]:
        columns[extra["cluster2"]] = z["cluster2_values"]
    if extra["predicted"]:
        columns["most_likely"] = pd.Categorical.from_codes(
            z["predicted_codes"], categories=[str(c) for c in z["predicted_categories"]]
        )
    if extra["interval"]:
        columns[extra["interval"]] = z["interval_values"]
    obs = pd.DataFrame(columns, index=[str(i) for i in range(n)])
    table = TableModel.parse(
        ad.AnnData(X=gv.astype(np.float32), obs=obs, var=pd.DataFrame(index=genes)),
        region="cells",
        region_key="region",
        instance_key="cell_id",
    )
    pts = PointsModel.parse(pd.DataFrame({"x": yx[:, 1], "y": yx[:, 0]}))
    sdata = SpatialData(
        shapes={"cells": circles}, points={"cells_points": pts}, tables={"table": table}
    )
    meta["build_sdata_s"] = _now() - t0
    from napari_spatialdata import Interactive
    from napari_spatialdata._view import QtAdataViewWidget
    from napari_spatialdata.constants import config

    meta["config"] = {
        "POINT_THRESHOLD": config.POINT_THRESHOLD,
        "CIRCLES_AS_POINTS": config.CIRCLES_AS_POINTS,
        "N_CIRCLES_WARNING_THRESHOLD": config.N_CIRCLES_WARNING_THRESHOLD,
    }
    viewer, app, m, shown = idle_peer_viewer("napari-spatialdata")
    meta.update(shown)
    inter, _ = m.action(
        "open: Interactive(sdata, headless=True)", lambda: Interactive(sdata, True), key="open"
    )
    # the element is read and its layer built in a QThread (SdataWidget.worker_thread,
    # DataLoadThread); the layer is added when the thread returns: wait for it
    thread = inter._sdata_widget.worker_thread

    def loading(n: int) -> Any:
        return lambda: thread.isRunning() or len(viewer.layers) <= n

    _, row = m.action(
        "load: Interactive.add_element('cells' circles), layer built in its QThread",
        lambda: inter.add_element("cells", "global"),
        busy=loading(len(viewer.layers)),
        key="load",
    )
    layer = viewer.layers[-1]
    row["n_points_drawn"] = len(layer.data)
    meta["circles_layer"] = {
        "type": type(layer).__name__,
        "n_points": len(layer.data),
        "size": float(np.mean(layer.size)),
        "antialiasing": float(layer.antialiasing),
        "canvas_size_limits": list(layer.canvas_size_limits),
    }
    views = viewer.window._qt_window.findChildren(QtAdataViewWidget)
    view = views[0]

    def select() -> None:
        viewer.layers.selection.active = layer

    m.action("select the cells layer (View widget reads its table)", select, key="select")
    m.action(
        f"show first gene ({genes[0]}): View var list",
        lambda: view.var_widget._onAction([genes[0]]),
        key="gene",
    )
    for i, g in enumerate(genes[1:]):
        m.action(
            f"switch gene ({g}): View var list",
            lambda g=g: view.var_widget._onAction([g]),
            key=f"switch{i + 1}",
        )
    m.action(
        f"show cluster probability ({cluster_col}): View obs list",
        lambda: view.obs_widget._onAction([cluster_col]),
        key="cluster",
    )
    for key, label in (
        ("cluster2", "show next cluster probability"),
        ("predicted", "show most likely cluster (categorical)"),
        ("interval", "show interval width"),
    ):
        col = extra[key]
        if col:
            m.action(
                f"{label} ({col}): View obs list",
                lambda col=col: view.obs_widget._onAction([col]),
                key=key,
            )
    # a key change in the plugin's Load widget recolours the cells by that column: here the
    # same as colouring by the categorical FOV column
    m.action(
        "colour by the FOV column: View obs list",
        lambda: view.obs_widget._onAction(["fov"]),
        key="keys",
    )
    _, row = m.action(
        "load points element: Interactive.add_element('cells_points')",
        lambda: inter.add_element("cells_points", "global"),
        busy=loading(len(viewer.layers)),
        key="points",
    )
    row["n_points_drawn"] = len(viewer.layers[-1].data)
    meta["points_element_drawn"] = len(viewer.layers[-1].data)
    m.hb.stop()
    rows = m.finish()
    meta["idle_max_stall_s"] = m.idle_max_stall_s
    # kept, not closed: napari-spatialdata's widgets leave a QThread running, and destroying it
    # aborts the process before the results are printed (the process ends with os._exit)
    _KEEP.extend([viewer, inter, sdata])
    return {"rows": rows, "meta": meta}


def run_peer(kind: str, input_path: Path, python: str, timeout: float) -> dict[str, Any]:
    """Run a peer in its own process (``python explore_sections.py <kind> --input ...``)."""
    import common

    cmd = [python, str(Path(__file__).resolve()), kind, "--input", str(input_path)]
    out = common.run_measured(cmd, timeout=timeout, sample_s=0.2)
    return out


#: Columns of the peers' table that a plugin run adds when it ran those actions.
_OPTIONAL_TABLE = (
    "cluster2",
    "cluster2_values",
    "predicted_codes",
    "predicted_categories",
    "interval_values",
)


def write_peer_inputs(captured: dict[str, Any], out_dir: Path, tag: str) -> tuple[Path, Path]:
    pkl = out_dir / f"_peer_{tag}.pkl"
    with open(pkl, "wb") as fh:
        pickle.dump(
            {k: captured[k] for k in ("load", "gene", "switches", "cluster", "camera")},
            fh,
            protocol=pickle.HIGHEST_PROTOCOL,
        )
    npz = out_dir / f"_peer_{tag}.npz"
    t = captured["table"]
    np.savez(
        npz,
        yx=t["yx"],
        genes=np.asarray(t["genes"], dtype=str),
        gene_values=t["gene_values"],
        cluster=np.asarray(t["cluster"], dtype=str),
        cluster_values=t["cluster_values"],
        fov_codes=t["fov_codes"],
        fov_categories=t["fov_categories"],
        point_size=np.float64(t["point_size"]),
        **{k: t[k] for k in _OPTIONAL_TABLE if k in t},
    )
    return pkl, npz


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["bare", "spatialdata"])
    p.add_argument("--input", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        out = peer_bare(args.input) if args.kind == "bare" else peer_spatialdata(args.input)
    except Exception as exc:  # one JSON line either way: the benchmark records why
        import traceback

        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "traceback": tb}), flush=True)
        os._exit(1)
    out["peak_rss_mib"] = _peak_rss_mib()
    print(json.dumps(out, default=_jsonable), flush=True)
    sys.stderr.flush()
    os._exit(0)  # no Qt teardown: the numbers are out


def _peak_rss_mib() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.integer | np.floating):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
