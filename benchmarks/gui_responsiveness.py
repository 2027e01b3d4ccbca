"""GUI responsiveness: event-loop stalls of a shown napari viewer while a mapping runs.

A ``QTimer`` heartbeat (every ``--interval-ms``, default 10 ms) records when the Qt event loop
gets to run. A stall is the gap between two heartbeats minus the interval; the longest gap and
the 99th percentile are reported per phase:

* ``idle``: the viewer with the spatial data shown, nothing running (baseline);
* ``mapping``: a mapping runs in a worker thread, with per-epoch progress delivered to the
  main thread;
* ``layers``: the result layers (predicted cluster and imputed genes) are added on the main
  thread.

How the mapping is driven: if the plugin's Map widget (``plugin/widgets/map_widget.py``) exists and
exposes a way to start a run programmatically, it is used; otherwise this script drives
``napari.qt.threading.thread_worker`` around ``map_cells_to_space`` itself (as a widget would)
and adds the layers through the plugin's ``plugin.widgets.layer_ops`` functions. The JSON output says
which path was taken.

Needs a display: run under ``xvfb-run -a`` (or a real desktop); ``QT_QPA_PLATFORM=offscreen``
also works but does not render with OpenGL, which under-states drawing costs.

Usage (``--scenario legacy``, the default: the above)::

    xvfb-run -a python benchmarks/gui_responsiveness.py --n-ref 2000 --n-sp 20000 --n-genes 130 \
        --epochs 200 --repeats 3

Whole sections (issue 12, "Numbers"): ``--scenario seed`` (the seed's shape: 40,864 spatial cells
in 140 FOVs over 4 samples, 9,448 reference cells, 2,000 reference genes, 132 panel genes) and
``--scenario section1m`` (10^6 cells in one section with 500 FOVs, 3,000 reference cells and 400
reference genes so that the result, 10^6 x 400 float32 = 1.6 GB, fits beside napari). In a shown
1920x1080 viewer the plugin's Load widget draws the spatial data, the Map widget maps in a worker,
the Explore widget shows a gene, switches genes (``--switches``), shows a cluster probability and
goes to a FOV with the others dimmed; each step's wall time, next frame, longest event-loop stall,
layer count and RSS are recorded (see ``explore_sections.py``). The peers run in their own
processes on the same cells: ``bare`` (the same layers with napari's public API, the switch with
public setters) and ``spatialdata`` (napari-spatialdata in its own virtual environment,
``--sd-python``). Writes ``gui_explore_<scenario>[_<tag>].json`` and ``.md`` and two screenshots
(``gui_explore_<scenario>_gene.png``, ``..._fov.png``) into ``--out-dir``::

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/gui_responsiveness.py \
        --scenario seed --out-dir out/gui
    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/gui_responsiveness.py \
        --scenario section1m --out-dir out/gui
    # a small smoke run (well under two minutes)
    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/gui_responsiveness.py \
        --scenario seed --cells 20000 --fovs 20 --samples 2 --reference-cells 1000 \
        --ref-genes 300 --tag small --out-dir out/gui

The napari-spatialdata environment (never the project's ``.venv``)::

    /root/.pyenv/versions/3.11.7/bin/python -m venv /work/venv-sd
    /work/venv-sd/bin/pip install "napari[pyqt6]" napari-spatialdata spatialdata
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import log

_KEEP: list[Any] = []


class Heartbeat:
    """Record the times at which a repeating QTimer fires, labelled by phase."""

    def __init__(self, interval_ms: int) -> None:
        from qtpy.QtCore import QTimer

        self.interval = interval_ms / 1000
        self._phase = "setup"
        self.switches: list[tuple[float, str]] = [(time.perf_counter(), "setup")]
        self.ticks: list[tuple[float, str]] = []
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        self._phase = value
        self.switches.append((time.perf_counter(), value))

    def _tick(self) -> None:
        self.ticks.append((time.perf_counter(), self.phase))

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def stalls(self) -> pd.DataFrame:
        """One row per gap between heartbeats: the stall in ms and the phase it overlaps most.

        A handler that blocks the main thread (e.g. adding layers) starts and ends inside one
        gap, so attributing a gap by its overlap with the phase intervals puts it where it belongs.
        """
        if len(self.ticks) < 2:
            return pd.DataFrame(columns=["phase", "stall_ms"])
        t = np.array([x for x, _ in self.ticks])
        sw_t = np.array([x for x, _ in self.switches] + [np.inf])
        sw_p = [p for _, p in self.switches]
        phases = []
        for a, b in zip(t[:-1], t[1:], strict=True):
            i0 = max(int(np.searchsorted(sw_t, a, side="right")) - 1, 0)
            i1 = max(int(np.searchsorted(sw_t, b, side="right")) - 1, 0)
            best, best_len = sw_p[i0], -1.0
            for i in range(i0, i1 + 1):
                ov = min(b, sw_t[i + 1]) - max(a, sw_t[i])
                if ov > best_len:
                    best, best_len = sw_p[i], ov
            phases.append(best)
        gap = np.diff(t) - self.interval
        return pd.DataFrame(
            {"phase": phases, "stall_ms": np.maximum(gap, 0.0) * 1000, "t_start": t[:-1]}
        )

    def phase_start(self, phase: str) -> float:
        return next((x for x, p in self.switches if p == phase), float("nan"))


def _process_until(app: Any, cond, timeout: float) -> None:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.001)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("timed out waiting for the GUI")


def _spin(app: Any, seconds: float) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.001)


def map_widget_api() -> str | None:
    """A description of the Map widget if the module exists, else ``None``."""
    try:
        from napari_spatial_impute.plugin.widgets import map_widget  # noqa: F401
    except Exception:
        return None
    return "napari_spatial_impute.plugin.widgets.map_widget"


def run_once_widget(
    viewer: Any, app: Any, widget: Any, args: argparse.Namespace, hb: Heartbeat, genes: list[str]
) -> dict[str, Any]:
    """Press the Map widget's run (``MapWidget.run``) and wait; time its result handler."""
    from napari_spatial_impute.plugin.widgets.layer_ops import open_gene

    state: dict[str, Any] = {"done": False, "epochs_seen": 0, "error": None}
    original = type(widget)._on_returned
    steps: dict[str, float] = {}

    def on_returned(value: Any) -> None:  # the widget's own handler, bracketed by phase marks
        hb.phase = f"layers#{args._repeat}"
        t = time.perf_counter()
        original(widget, value)
        steps["MapWidget._on_returned (result into model, cluster layers added)"] = (
            time.perf_counter() - t
        )
        # stay in the layers phase: the canvas draws the new layer on the next events

    widget._on_returned = on_returned  # connected by run() from the instance attribute
    widget.form.epochs.value = args.epochs
    hb.phase = f"mapping#{args._repeat}"
    t0 = time.perf_counter()
    worker = widget.run()
    if worker is None:
        raise RuntimeError("the Map widget did not start (no data in the model?)")
    _KEEP.append(worker)
    worker.yielded.connect(  # epochs arrive in throttled batches (lists)
        lambda batch: state.__setitem__("epochs_seen", state["epochs_seen"] + len(batch))
    )
    worker.errored.connect(lambda e: state.__setitem__("error", repr(e)))
    worker.finished.connect(lambda: state.__setitem__("done", True))
    _process_until(app, lambda: state["done"], args.timeout)
    t_map = time.perf_counter() - t0
    if state["error"]:
        raise RuntimeError(state["error"])
    hb.phase = "idle_after"
    _spin(app, 0.5)
    adata = widget.model.result
    hb.phase = f"layers#{args._repeat}"
    t1 = time.perf_counter()
    for g in genes:  # what the Explore widget does when a gene is chosen
        t = time.perf_counter()
        open_gene(viewer, adata, g)
        steps[f"open_gene({g}) (imputed + measured layers)"] = time.perf_counter() - t
        t = time.perf_counter()
        app.processEvents()
        steps[f"open_gene({g}): next events/draw"] = time.perf_counter() - t
    _spin(app, 0.5)
    t_layers = (
        time.perf_counter()
        - t1
        + steps.get("MapWidget._on_returned (result into model, cluster layers added)", 0.0)
    )
    hb.phase = "idle_end"
    _spin(app, 0.3)
    hb.phase = "idle"
    return {
        "map_s": t_map,
        "layers_s": t_layers,
        "epochs_seen": state["epochs_seen"],
        "layer_steps_s": steps,
    }


def run_once(
    viewer: Any,
    app: Any,
    ref: Any,
    spa: Any,
    args: argparse.Namespace,
    hb: Heartbeat,
    genes: list[str],
) -> dict[str, Any]:
    from napari.qt.threading import thread_worker

    from napari_spatial_impute import map_cells_to_space
    from napari_spatial_impute.plugin.model import get_model
    from napari_spatial_impute.plugin.widgets.layer_ops import open_gene, open_predicted

    state: dict[str, Any] = {"done": False, "epochs_seen": 0, "error": None}

    @thread_worker(progress={"total": args.epochs, "desc": "mapping"})
    def work_streaming():
        import queue
        import threading

        q: queue.Queue = queue.Queue()
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["res"] = map_cells_to_space(
                    ref,
                    spa,
                    method="tangram",  # epochs to report while the GUI is measured
                    cluster_key="cell_type",
                    epochs=args.epochs,
                    seed=0,
                    callback=q.put,
                )
            except BaseException as e:
                box["err"] = e
            q.put(None)

        th = threading.Thread(target=target, daemon=True)
        th.start()
        while True:
            info = q.get()
            if info is None:
                break
            yield info
        th.join()
        if "err" in box:
            raise box["err"]
        from napari_spatial_impute.core.export import result_to_anndata

        return result_to_anndata(box["res"], genes=genes)

    def on_yield(info: Any) -> None:
        state["epochs_seen"] += 1

    def on_return(adata: Any) -> None:
        state["adata"] = adata

    def on_error(e: BaseException) -> None:
        state["error"] = repr(e)

    def on_finish() -> None:
        state["done"] = True

    worker = work_streaming()
    _KEEP.append(worker)  # a worker collected while Qt still holds it crashes the process
    worker.yielded.connect(on_yield)
    worker.returned.connect(on_return)
    worker.errored.connect(on_error)
    worker.finished.connect(on_finish)
    hb.phase = f"mapping#{args._repeat}"
    t0 = time.perf_counter()
    worker.start()
    _process_until(app, lambda: state["done"], args.timeout)
    t_map = time.perf_counter() - t0
    if state["error"]:
        raise RuntimeError(state["error"])
    hb.phase = "idle_after"
    _spin(app, 0.3)
    adata = state["adata"]
    hb.phase = f"layers#{args._repeat}"
    t1 = time.perf_counter()
    steps: dict[str, float] = {}

    def timed(name: str, fn, *a) -> None:
        t = time.perf_counter()
        fn(*a)
        steps[name] = time.perf_counter() - t
        t = time.perf_counter()
        app.processEvents()  # the draw triggered by the change
        steps[name + " (next events/draw)"] = time.perf_counter() - t

    timed("model.set_result", get_model(viewer).set_result, adata)
    timed("open_predicted", open_predicted, viewer, adata)
    for g in genes:
        timed(f"open_gene({g})", open_gene, viewer, adata, g)
    _spin(app, 0.5)  # let the canvas draw the new layers
    t_layers = time.perf_counter() - t1
    hb.phase = "idle_end"
    _spin(app, 0.3)
    hb.phase = (
        "idle"  # later repeats recolour / rebuild the same layers, as a re-run in the plugin does
    )
    return {
        "map_s": t_map,
        "layers_s": t_layers,
        "epochs_seen": state["epochs_seen"],
        "layer_steps_s": steps,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-ref", type=int, default=2000)
    p.add_argument("--n-sp", type=int, default=20000)
    p.add_argument("--n-genes", type=int, default=130)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--interval-ms", type=int, default=10)
    p.add_argument("--genes", type=int, default=2, help="imputed gene layers to add")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument(
        "--no-widget",
        action="store_true",
        help="drive a thread_worker even if the Map widget exists",
    )
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", type=Path, default=common.BENCH_OUT)
    p.add_argument(
        "--scenario",
        choices=["legacy", "seed", "section1m"],
        default="legacy",
        help="legacy: stalls while mapping (the options above); seed/section1m: whole sections",
    )
    sizes = p.add_argument_group("whole-section sizes (override the scenario's)")
    sizes.add_argument("--cells", type=int)
    sizes.add_argument("--fovs", type=int)
    sizes.add_argument("--samples", type=int)
    sizes.add_argument("--reference-cells", type=int)
    sizes.add_argument("--ref-genes", type=int)
    sizes.add_argument("--panel", type=int)
    p.add_argument("--switches", type=int, default=2, help="gene switches after the first gene")
    p.add_argument(
        "--peers",
        nargs="*",
        choices=["bare", "spatialdata"],
        default=["bare", "spatialdata"],
        help="peers run side by side (own processes); none: --peers with no value",
    )
    p.add_argument("--sd-python", default="/work/venv-sd/bin/python")
    p.add_argument(
        "--profile",
        nargs="*",
        default=[],
        help="cProfile these plugin steps (load, map, gene, switch1, cluster, fov) into "
        "<out-dir>/profiles (profiling slows them: their times are then not the numbers)",
    )
    p.add_argument("--peer-timeout", type=float, default=1800)
    p.add_argument(
        "--keep-peer-inputs",
        action="store_true",
        help="keep _peer_<scenario>.pkl/.npz (the peers' inputs) in --out-dir",
    )
    return p.parse_args(argv)


_SIZE_ARGS = {
    "cells": "n_cells",
    "fovs": "n_fovs",
    "samples": "n_samples",
    "reference_cells": "n_reference",
    "ref_genes": "n_genes",
    "panel": "n_panel",
}


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _steps_md(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| step | wall s | draws during it: s (n) | next frame s | its vispy draws: s (n) "
        "| longest stall in the action s | longest gap touching it s | layers | RSS MiB "
        "| peak RSS so far MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {_fmt(r['wall_s'])} | "
            f"{_fmt(r['action_draw_s'])} ({r['action_n_draws']}) | {_fmt(r['frame_s'])} | "
            f"{_fmt(r['draw_s'])} ({r['n_draws']}) | {_fmt(r.get('stall_in_action_s'))} | "
            f"{_fmt(r.get('max_stall_s'))} | {r['n_layers']} | {r['rss_mib']:.0f} | "
            f"{_fmt(r.get('peak_rss_mib'), 0)} |"
        )
    return "\n".join(lines)


def _ratio(a: Any, b: Any) -> float:
    try:
        return float(a) / float(b) if float(b) > 0 else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def _peer_md(plugin: list[dict[str, Any]], peers: dict[str, Any]) -> tuple[str, list[dict]]:
    """One row per comparable step: the plugin's times and each peer's, with the ratios.

    "painted" is the wall time plus the forced next frame: a draw can happen inside an action
    (napari paints while a layer is inserted), so the frame alone does not compare.
    """
    by_key = {r["key"]: r for r in plugin if r.get("key")}
    head = "| step | plugin wall s | plugin painted s |"
    sep = "|---|---|---|"
    ok = {k: v for k, v in peers.items() if isinstance(v, dict) and "rows" in v}
    for k in ok:
        head += f" {k} wall s | {k} painted s | plugin/{k} wall | plugin/{k} painted |"
        sep += "---|---|---|---|"
    lines, out = [head, sep], []
    keys = (
        "load",
        "gene",
        *[k for k in by_key if k.startswith("switch")],
        "cluster",
        "cluster2",
        "predicted",
        "interval",
        *[k for k in by_key if k.startswith("keys")],
        "fov",
    )
    for key in keys:
        if key not in by_key:
            continue
        pr = by_key[key]
        painted = pr["wall_s"] + pr["frame_s"]
        line = f"| {key} | {_fmt(pr['wall_s'])} | {_fmt(painted)} |"
        rec: dict[str, Any] = {
            "key": key,
            "plugin_wall_s": pr["wall_s"],
            "plugin_painted_s": painted,
        }
        for k, v in ok.items():
            # every key change compares with the peer's one recolouring by a category column
            other = {r["key"]: r for r in v["rows"]}.get("keys" if key.startswith("keys") else key)
            if other is None:
                line += " | | | |"
                continue
            o_painted = other["wall_s"] + other["frame_s"]
            rw = _ratio(pr["wall_s"], other["wall_s"])
            rp = _ratio(painted, o_painted)
            line += f" {_fmt(other['wall_s'])} | {_fmt(o_painted)} | {_fmt(rw)} | {_fmt(rp)} |"
            rec.update(
                {
                    f"{k}_wall_s": other["wall_s"],
                    f"{k}_painted_s": o_painted,
                    f"ratio_wall_plugin_over_{k}": rw,
                    f"ratio_painted_plugin_over_{k}": rp,
                }
            )
        lines.append(line)
        out.append(rec)
    return "\n".join(lines), out


def run_scenario(args: argparse.Namespace) -> dict[str, Any]:
    """A whole-section scenario (``--scenario seed|section1m``), see the module docstring."""
    import gc

    import explore_sections as es

    sizes = dict(es.SCENARIOS[args.scenario])
    for arg, key in _SIZE_ARGS.items():
        if getattr(args, arg) is not None:
            sizes[key] = getattr(args, arg)
    tag = args.scenario + (f"_{args.tag}" if args.tag else "")
    args.scenario_tag = tag
    args.out_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = common.machine_info()
    info["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    info["scenario"] = args.scenario
    info["display"] = os.environ.get("DISPLAY", "")
    info["qt_platform"] = os.environ.get("QT_QPA_PLATFORM", "(default)")
    log(f"[{tag}] sizes {sizes}")
    res = es.run_plugin(args, sizes, args.out_dir)
    info["plugin"] = {"rows": res["rows"], **res["meta"]}
    peers: dict[str, Any] = {}
    if args.peers:
        pkl, npz = es.write_peer_inputs(res["captured"], args.out_dir, tag)
        del res
        gc.collect()
        for kind in args.peers:
            python = sys.executable if kind == "bare" else args.sd_python
            if not Path(python).exists():
                peers[kind] = {"not_run": f"{python} does not exist (napari-spatialdata env)"}
                log(f"[{tag}] peer {kind}: not run ({peers[kind]['not_run']})")
                continue
            log(f"[{tag}] peer {kind} ({python})")
            out = es.run_peer(kind, pkl if kind == "bare" else npz, python, args.peer_timeout)
            peers[kind] = out
            if "rows" not in out:
                log(f"[{tag}] peer {kind} failed: {out.get('error')}")
        if not args.keep_peer_inputs:
            for f in (pkl, npz):
                f.unlink(missing_ok=True)
    info["peers"] = peers
    plugin_rows = info["plugin"]["rows"]
    cmp_md, cmp_rows = _peer_md(plugin_rows, peers)
    info["comparison"] = cmp_rows
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    pm = info["plugin"]
    md = [
        f"## GUI: {tag}",
        "",
        f"Spatial {pm['spatial_shape'][0]:,} cells x {pm['spatial_shape'][1]} genes in "
        f"{pm['n_fovs']} FOVs over {pm['n_samples']} sample(s); reference "
        f"{pm['reference_shape'][0]:,} cells x {pm['reference_shape'][1]:,} genes; result "
        f"{pm['result_shape'][0]:,} x {pm['result_shape'][1]:,} ({pm['result_X_dtype']}); "
        f"map method {pm['map_method']}. Window {pm['window_px']}, canvas {pm['canvas_px']}; "
        f"{info['cpu']}, {info['logical_cpus']} CPUs, software OpenGL. Idle longest stall "
        f"{_fmt(pm['idle_max_stall_s'], 3)} s.",
        "",
        "### Plugin (Load, Map, Explore widgets)",
        "",
        _steps_md(plugin_rows),
        "",
        "### Side by side (ratios: plugin / peer)",
        "",
        "painted = wall time + the forced next frame. The plugin's first gene adds its layers "
        "(and, with several samples, the FOV outline layer); bare napari adds the same gene "
        "layers; napari-spatialdata recolours its one loaded layer (all cells).",
        "",
        cmp_md,
    ]
    for kind, v in peers.items():
        md += ["", f"### Peer: {kind}", ""]
        if "rows" in v:
            md.append(_steps_md(v["rows"]))
            md.append("")
            md.append(
                f"Peak RSS of the peer process {_fmt(v.get('peak_rss_mib'), 0)} MiB; "
                f"meta: `{json.dumps(v.get('meta', {}), default=str)}`"
            )
        else:
            md.append(f"Not measured: {v.get('not_run') or v.get('error')}")
    if pm.get("notifications"):
        md += ["", "Notifications during the plugin run: " + "; ".join(pm["notifications"])]
    md += ["", "Screenshots: " + ", ".join(pm["screenshots"])]
    text = "\n".join(md) + "\n"
    (args.out_dir / f"gui_explore_{tag}.md").write_text(text)
    common.write_json(info, args.out_dir / f"gui_explore_{tag}.json")
    print(text, flush=True)
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.scenario != "legacy":
        return run_scenario(args)
    import napari
    from qtpy.QtWidgets import QApplication

    info = common.machine_info()
    info["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    info["qt_platform"] = os.environ.get("QT_QPA_PLATFORM", "(default)")
    info["display"] = os.environ.get("DISPLAY", "")
    widget_mod = map_widget_api()
    use_widget = widget_mod is not None and not args.no_widget
    ref, spa = common.simulate_pair(args.n_ref, args.n_sp, args.n_genes, seed=0)
    genes = list(ref.var_names[: args.genes])
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.add_points(np.asarray(spa.obsm["spatial"])[:, ::-1], size=4, name="spatial cells")
    widget = None
    if use_widget:
        from napari_spatial_impute.plugin.model import get_model
        from napari_spatial_impute.plugin.widgets.map_widget import MapWidget

        widget = MapWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Map", area="right")
        model = get_model(viewer)
        model.set_reference(ref)
        model.set_spatial(spa)
        model.set_keys(cluster_key="cell_type")
        app.processEvents()
        info["driver"] = (
            "the plugin's Map widget (MapWidget docked in the shown viewer; run() as the Map button "
            "does; its worker streams epochs to the progress bar and score plot; its result handler "
            "adds the most-likely-cluster layer), then plugin.widgets.layer_ops.open_gene per gene as the "
            "Explore widget does"
        )
    else:
        info["driver"] = (
            "own thread_worker around map_cells_to_space (a worker thread runs the mapping and streams "
            "per-epoch info to the main thread; layers added with plugin.widgets.layer_ops.open_predicted/open_gene)"
        )
    info["map_widget_module"] = widget_mod or "absent when this ran"
    hb = Heartbeat(args.interval_ms)
    hb.start()
    _spin(app, 0.5)
    hb.phase = "idle"
    _spin(app, 1.0)
    runs = []
    for r in range(args.repeats):
        load = common.loadavg()
        args._repeat = r
        log(
            f"repeat {r + 1}/{args.repeats}: mapping {args.n_ref}x{args.n_sp}x{args.n_genes}, {args.epochs} epochs (load {load})"
        )
        if widget is not None:
            out = run_once_widget(viewer, app, widget, args, hb, genes)
        else:
            out = run_once(viewer, app, ref, spa, args, hb, genes)
        out["repeat"] = r
        out["loadavg_1m"] = load
        runs.append(out)
        log(
            f"  map {out['map_s']:.1f} s, layers {out['layers_s']:.2f} s, epochs seen {out['epochs_seen']}"
        )
    hb.stop()
    st = hb.stalls()
    table = []
    st["kind"] = st["phase"].str.split("#").str[0]
    st["rep"] = pd.to_numeric(st["phase"].str.split("#").str[1], errors="coerce")
    groups = [
        (
            "idle (viewer shown, nothing running)",
            st["kind"].isin(["idle", "idle_after", "idle_end"]),
        )
    ]
    for kind, label in [
        ("mapping", "mapping in a worker thread"),
        ("layers", "adding result layers"),
    ]:
        groups.append((f"{label}: all repeats", st["kind"] == kind))
        groups.append((f"{label}: first repeat (cold)", (st["kind"] == kind) & (st["rep"] == 0)))
        if args.repeats > 1:
            groups.append(
                (f"{label}: later repeats (warm)", (st["kind"] == kind) & (st["rep"] > 0))
            )
    for label, mask in groups:
        v = st.loc[mask, "stall_ms"].to_numpy()
        if not len(v):
            continue
        table.append(
            {
                "phase": label,
                "n_ticks": len(v),
                "max_stall_ms": float(v.max()),
                "p99_stall_ms": float(np.percentile(v, 99)),
                "p50_stall_ms": float(np.median(v)),
                "goal_max_below_100ms": bool(v.max() < 100),
            }
        )
    # where the longest stalls of each run's phases happened (seconds after the phase began)
    for r, run in enumerate(runs):
        for kind in ("mapping", "layers"):
            ph = f"{kind}#{r}"
            sub = st[st["phase"] == ph].nlargest(3, "stall_ms")
            t0 = hb.phase_start(ph)
            run[f"{kind}_top_stalls"] = [
                {"stall_ms": round(float(v), 1), "at_s_after_phase_start": round(float(a - t0), 2)}
                for v, a in zip(sub["stall_ms"], sub["t_start"], strict=True)
            ]
    tab = pd.DataFrame(table)
    tag = f"_{args.tag}" if args.tag else ""
    common.write_csv(tab, args.out_dir / f"gui_responsiveness{tag}.csv")
    info["runs"] = runs
    info["phases"] = table
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    common.write_json(info, args.out_dir / f"gui_responsiveness{tag}.json")
    print(tab.to_string(index=False), flush=True)
    viewer.close()
    return info


if __name__ == "__main__":
    main()
