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

Usage::

    xvfb-run -a python benchmarks/gui_responsiveness.py --n-ref 2000 --n-sp 20000 --n-genes 130 \
        --epochs 200 --repeats 3
"""

from __future__ import annotations

import argparse
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
        return box["res"].to_anndata(genes=genes)

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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
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
