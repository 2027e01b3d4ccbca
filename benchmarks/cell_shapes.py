"""Cells coloured in their own masks by a gene: the plugin beside napari-spatialdata, same labels.

Two stores: the real CosMx lung store (two FOVs, per-FOV label images; built from
``../shared/data`` when present) and a synthetic store of about 10^5 cells in one label image
(8 x 8 px squares, seeded). For each, in a shown 1920x1080 viewer (run under
``xvfb-run -a -s "-screen 0 1920x1080x24"``):

* **plugin** (this process, the project's ``.venv``): File > Open of the store (image, labels,
  cells), the result = the store's cells, then ``model.set_shown`` of a gene as the Explore widget
  does; timed: the whole recolour until its colours are set (``wall_s``), the worker part (from
  ``set_shown`` to the colours reaching the main thread), the main-thread setter (the values
  image's lookup swap and refresh + ``layer.features``), and the first frame drawn after it
  (``frame_s``); the first gene (adds the cell labels layer and its values image) and a switch to
  another gene. The screenshot shows the gene chosen in the Explore dock (its colour scale).
* **napari-spatialdata** (its own venv, ``--sd-python``, a subprocess): ``Interactive`` on the same
  store, each labels element added, then coloured through its View widget's var list as a click
  does (it sets a ``DirectLabelColormap`` on the selected labels layer), first gene and switch.

Both viewers show the same camera: by default (``--view masks``) zoomed in until a cell spans
1.25 x ``MASKS_FROM_PX`` screen pixels, where the painter hides the cells' points so the masks
show; ``--view whole`` keeps the whole store in view, where the plugin draws the cells' points
over the masks (10^5 points cost seconds a frame under xvfb's software OpenGL).

Results: ``/tmp/bench_cell_shapes/cell_shapes_<store>[_whole].json`` (rows of both and the ratios
plugin / peer). Also writes ``--screenshot`` (the CosMx store coloured by COL1A1) when given.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/cell_shapes.py \
        --stores cosmx synthetic --screenshot docs/images/explore_cells_in_masks.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

OUT = Path("/tmp/bench_cell_shapes")
SYNTH_SIDE = 316  # 316^2 = 99,856 cells


# --------------------------------------------------------------------------- stores
def synthetic_store(path: Path, side: int = SYNTH_SIDE, n_genes: int = 3, seed: int = 0) -> Path:
    """One label image of ``side``^2 square cells (8 x 8 px in 10 x 10 px), a table annotating
    them (region ``cells``, instance ``cell_id``) with ``n_genes`` seeded genes, one RGB image."""
    import anndata as ad
    import dask.array as da
    import pandas as pd
    import spatialdata as sd
    from spatialdata.models import Image2DModel, Labels2DModel, TableModel

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    cell = np.zeros((10, 10), dtype=np.uint32)
    cell[1:9, 1:9] = 1
    ids = np.arange(1, side * side + 1, dtype=np.uint32).reshape(side, side)
    labels = np.kron(ids, np.ones((10, 10), np.uint32)) * np.tile(cell, (side, side))
    image = rng.integers(0, 60, size=(3, side * 10, side * 10), dtype=np.uint8)
    n = side * side
    genes = [f"G{j}" for j in range(n_genes)]
    table = ad.AnnData(
        X=rng.gamma(2.0, 1.0, size=(n, n_genes)).astype(np.float32),
        obs=pd.DataFrame(
            {"region": pd.Categorical(["cells"] * n), "cell_id": np.arange(1, n + 1)},
            index=[f"c{i}" for i in range(1, n + 1)],
        ),
        var=pd.DataFrame(index=genes),
    )
    sdata = sd.SpatialData(
        labels={
            "cells": Labels2DModel.parse(
                da.from_array(labels, chunks=1024), dims=("y", "x"), scale_factors=[2, 2, 2]
            )
        },
        images={
            "image": Image2DModel.parse(
                da.from_array(image, chunks=(3, 1024, 1024)),
                dims=("c", "y", "x"),
                c_coords=["r", "g", "b"],
                scale_factors=[2, 2, 2],
            )
        },
        tables={
            "table": TableModel.parse(
                table, region="cells", region_key="region", instance_key="cell_id"
            )
        },
    )
    sdata.write(path)
    return path


def cosmx_store(path: Path) -> Path | None:
    from napari_spatial_impute.io.datasets import shared_data_dir
    from napari_spatial_impute.io.demo_stores import build_cosmx_lung_store

    if path.exists():
        return path
    data = shared_data_dir()
    if data is None:
        return None
    return build_cosmx_lung_store(data, path)


# --------------------------------------------------------------------------- the plugin
def _shown(adata: Any, gene: str) -> Any:
    from napari.utils.colormaps import ensure_colormap

    from napari_spatial_impute.plugin.model import ShownValues
    from napari_spatial_impute.viz.explore import COLORMAPS

    col = adata[:, gene].X
    values = np.asarray(col.todense() if hasattr(col, "todense") else col).ravel()
    values = values.astype(np.float32)
    lo, hi = (float(q) for q in np.quantile(values, [0.01, 0.99]))
    hi = hi if hi > lo else lo + 1
    # a 256-colour lookup, as matplotlib colormaps (and so napari-spatialdata) colour values
    lut = ensure_colormap(COLORMAPS["measured"]).map(np.linspace(0, 1, 256))
    rgba = lut[np.round(np.clip((values - lo) / (hi - lo), 0, 1) * 255).astype(np.intp)]
    return ShownValues(
        "measured", gene, values, rgba.astype(np.float32), (lo, hi), COLORMAPS["measured"]
    )


def _camera(viewer: Any) -> Any:
    return getattr(getattr(viewer, "scene", None), "camera", None) or viewer.camera


def _demo_result(spatial: Any) -> Any:
    """A mapped result of the store's cells for the screenshot: the ensemble map onto every cell
    of a reference made of a seeded half of them (renamed, no coordinates; the store has no
    single-cell reference), so the Explore dock shows an imputed gene with its colour scale."""
    import warnings

    from napari_spatial_impute import map_cells_to_space
    from napari_spatial_impute.core.export import result_to_anndata

    rng = np.random.default_rng(0)
    ref = spatial[np.sort(rng.permutation(spatial.n_obs)[: spatial.n_obs // 2])].copy()
    ref.obs_names = [f"ref_{n}" for n in ref.obs_names]
    del ref.obsm["spatial"]
    ref.uns.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = map_cells_to_space(ref, spatial, method="ensemble", uncertainty=False)
    return result_to_anndata(res)


def run_plugin(
    store: Path, genes: list[str], screenshot: Path | None, view: str = "masks"
) -> dict[str, Any]:
    from explore_sections import Meter, canvas_info, shown_viewer

    from napari_spatial_impute.plugin.cell_shapes import connect_cell_painter
    from napari_spatial_impute.plugin.sync import connect_model
    from napari_spatial_impute.viz.cell_shapes import CELL_LABELS_KIND
    from napari_spatial_impute.viz.layers import plugin_meta

    viewer, app = shown_viewer("napari-spatial-impute: cells in their masks")
    m = Meter(viewer, app)
    m.hb.start()
    m.spin(0.5)
    m.hb.phase = "idle"
    meta: dict[str, Any] = {"store": str(store), **canvas_info(viewer)}
    model = connect_model(viewer)
    m.action(
        "open: File > Open (image, labels, cells)",
        lambda: viewer.open(str(store), plugin="napari-spatial-impute"),
        key="open",
    )
    model.set_result(model.spatial)
    meta["n_cells"] = int(model.spatial.n_obs)
    painter = connect_cell_painter(viewer)
    camera = _camera(viewer)
    viewer.reset_view()
    if view == "masks":  # zoomed in until a cell spans MASKS_FROM_PX (x 1.25) screen pixels
        from napari_spatial_impute.viz.cell_shapes import MASKS_FROM_PX, cell_spacing

        need = 1.25 * MASKS_FROM_PX / cell_spacing(model.spatial.obsm["spatial"])
        camera.zoom = max(float(camera.zoom), need)
    meta["view"] = view
    meta["camera"] = {"zoom": float(camera.zoom), "center": [float(c) for c in camera.center]}
    # the store's labels start the label lookups' compile in a worker (a user reaches Explore
    # seconds later): wait for it, idle, and record how long it took
    t0 = time.perf_counter()
    if painter.worker is not None:
        m.wait(lambda: not painter.worker.is_running, 600)
    meta["warm_up_wait_s"] = time.perf_counter() - t0
    marks: dict[str, float] = {}
    real_apply = painter._apply

    def timed_apply(prepared: Any) -> None:
        marks["apply_start"] = time.perf_counter()
        real_apply(prepared)
        marks["apply_end"] = time.perf_counter()

    painter._apply = timed_apply  # type: ignore[method-assign]
    for i, gene in enumerate(genes):
        shown = _shown(model.spatial, gene)
        target = painter.applied + 1

        def go(shown: Any = shown) -> None:
            marks["start"] = time.perf_counter()
            model.set_shown(shown)

        _, row = m.action(
            f"{'first gene' if i == 0 else 'switch gene'} ({gene}): set_shown -> labels coloured",
            go,
            busy=lambda target=target: painter.applied < target,
            key="gene" if i == 0 else f"switch{i}",
        )
        row["worker_s"] = marks["apply_start"] - marks["start"]
        row["setter_s"] = marks["apply_end"] - marks["apply_start"]
    cells = [lay for lay in viewer.layers if plugin_meta(lay).get("kind") == CELL_LABELS_KIND]
    meta["cell_layers"] = [lay.name for lay in cells]
    if screenshot is not None:
        # as a user gets there: the Explore dock shows the gene (its colour scale beside)
        from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget

        model.set_result(_demo_result(model.spatial))
        explore = ExploreWidget(viewer)
        viewer.window.add_dock_widget(explore, name="Explore", area="right")
        # imputed alone: "measured beside imputed" puts the layers in a grid, one a cell
        explore.measured_check.setChecked(False)
        target = painter.applied + 1
        explore.show_gene(genes[0])
        m.wait(lambda: not explore.busy and painter.applied >= target, 300)
        viewer.reset_view()  # zoomed to the masks: the painter hides the cells' points
        m.screenshot(screenshot)
        meta["points_visible_in_screenshot"] = [
            lay.name for lay in viewer.layers if type(lay).__name__ == "Points" and lay.visible
        ]
        meta["screenshot"] = str(screenshot)
    m.hb.stop()
    rows = m.finish()
    viewer.close()
    return {"rows": rows, "meta": meta}


# --------------------------------------------------------------------------- the peer
def run_peer(store: Path, genes: list[str], camera: list[float] | None = None) -> dict[str, Any]:
    """napari-spatialdata: Interactive on the store, each labels element, View var list."""
    from importlib.metadata import version

    import spatialdata as sd
    from explore_sections import Meter, canvas_info, shown_viewer
    from napari_spatialdata import Interactive
    from napari_spatialdata._view import QtAdataViewWidget

    sdata = sd.read_zarr(store)
    meta: dict[str, Any] = {
        "versions": {k: version(k) for k in ("napari", "napari-spatialdata", "spatialdata")},
        "labels": list(sdata.labels),
    }
    viewer, app = shown_viewer("napari-spatialdata: cells in their masks")
    m = Meter(viewer, app)
    m.hb.start()
    m.spin(0.5)
    m.hb.phase = "idle"
    meta.update(canvas_info(viewer))
    inter, _ = m.action(
        "open: Interactive(sdata, headless=True)", lambda: Interactive(sdata, True), key="open"
    )
    thread = inter._sdata_widget.worker_thread
    layers = []
    for name in sdata.labels:
        n0 = len(viewer.layers)
        m.action(
            f"load labels {name}",
            lambda name=name: inter.add_element(name, "global"),
            busy=lambda n0=n0: thread.isRunning() or len(viewer.layers) <= n0,
            key=f"load {name}",
        )
        layers.append(viewer.layers[-1])
    view = viewer.window._qt_window.findChildren(QtAdataViewWidget)[0]
    if camera:  # the plugin's camera: the same pixels in view
        cam = _camera(viewer)
        cam.center = tuple(camera[1:])
        cam.zoom = camera[0]
        meta["camera"] = {"zoom": float(cam.zoom), "center": [float(c) for c in cam.center]}
    for i, gene in enumerate(genes):

        def colour(gene: str = gene) -> None:
            for layer in layers:  # each element's layer, as a user clicks each
                viewer.layers.selection.active = layer
                view.var_widget._onAction([gene])

        m.action(
            f"{'first gene' if i == 0 else 'switch gene'} ({gene}): View var list",
            colour,
            key="gene" if i == 0 else f"switch{i}",
        )
    meta["colormaps"] = [type(lay.colormap).__name__ for lay in layers]
    m.hb.stop()
    rows = m.finish()
    _KEEP.extend([viewer, inter, sdata])
    return {"rows": rows, "meta": meta}


_KEEP: list[Any] = []


def _peer_process(
    python: str, store: Path, genes: list[str], timeout: float, camera: dict[str, Any]
) -> dict[str, Any]:
    import common

    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--peer",
        "--store",
        str(store),
        "--genes",
        *genes,
        "--camera",
        *(str(v) for v in [camera["zoom"], *camera["center"]]),
    ]
    # the meter's heartbeat module imports this package (pure Python): its sources, not its venv
    src = str(Path(__file__).resolve().parents[1] / "src")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    return common.run_measured(cmd, timeout=timeout, sample_s=0.2)


def _ratios(ours: list[dict[str, Any]], peer: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {r["key"]: r for r in peer}
    out = []
    for r in ours:
        p = by_key.get(r["key"])
        if p is None or not r["key"].startswith(("gene", "switch")):
            continue
        ours_t = r["wall_s"] + r["frame_s"]
        peer_t = p["wall_s"] + p["frame_s"]
        out.append(
            {
                "key": r["key"],
                "plugin_painted_s": ours_t,
                "peer_painted_s": peer_t,
                "ratio": ours_t / peer_t if peer_t else float("nan"),
                "plugin_main_thread_s": r["setter_s"] + r["frame_s"],
                "peer_main_thread_s": p["wall_s"] + p["frame_s"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stores", nargs="+", default=["cosmx", "synthetic"])
    p.add_argument("--store", type=Path)
    p.add_argument("--genes", nargs="+")
    p.add_argument("--peer", action="store_true", help="(internal) run napari-spatialdata")
    p.add_argument("--sd-python", default="/work/venv-sd/bin/python")
    p.add_argument("--screenshot", type=Path)
    p.add_argument(
        "--view",
        choices=["masks", "whole"],
        default="masks",
        help="masks: zoomed in until the masks are readable (the cells' points hidden, both "
        "viewers at the same camera); whole: the whole store (the points drawn over the masks)",
    )
    p.add_argument("--camera", nargs="+", type=float, help="(internal) zoom, center")
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args(argv)
    if args.peer:
        try:
            out = run_peer(args.store, args.genes, args.camera)
        except Exception as exc:
            import traceback

            print(
                json.dumps({"error": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()})
            )
            os._exit(1)
        print(json.dumps(out, default=str), flush=True)
        os._exit(0)
    import common

    OUT.mkdir(parents=True, exist_ok=True)
    for which in args.stores:
        if which == "cosmx":
            store = cosmx_store(OUT / "cosmx_lung.zarr")
            genes = ["COL1A1", "EPCAM"]
            shot = args.screenshot
        else:
            store = synthetic_store(OUT / "synthetic_1e5.zarr")
            genes, shot = ["G0", "G1"], None
        if store is None:
            print(f"{which}: not run (no shared data folder)")
            continue
        info: dict[str, Any] = {"machine": common.machine_info(), "store": which}
        info["plugin"] = run_plugin(store, genes, shot, args.view)
        if Path(args.sd_python).exists():
            camera = info["plugin"]["meta"]["camera"]
            info["peer"] = _peer_process(args.sd_python, store, genes, args.timeout, camera)
        else:
            info["peer"] = {"not_run": f"{args.sd_python} does not exist"}
        peer_rows = info["peer"].get("rows", [])
        info["ratios"] = _ratios(info["plugin"]["rows"], peer_rows)
        info["loadavg_at_end"] = list(os.getloadavg())
        suffix = "" if args.view == "masks" else f"_{args.view}"
        common.write_json(info, OUT / f"cell_shapes_{which}{suffix}.json")
        print(json.dumps({"store": which, "ratios": info["ratios"]}, indent=1, default=str))
        for r in info["plugin"]["rows"]:
            print(
                "plugin",
                r["key"],
                {k: r.get(k) for k in ("wall_s", "worker_s", "setter_s", "frame_s", "max_stall_s")},
            )
        for r in peer_rows:
            print("peer  ", r["key"], {k: r.get(k) for k in ("wall_s", "frame_s", "max_stall_s")})
        if "error" in info["peer"] or "rows" not in info["peer"]:
            print("peer:", {k: v for k, v in info["peer"].items() if k != "rows"})
    shutil.rmtree(OUT / "unused", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
