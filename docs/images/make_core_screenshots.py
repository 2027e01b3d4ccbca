"""Make the screenshots of the Load data and Map widgets used in docs/user-guide-core.md.

Run under a display (e.g. ``xvfb-run -a .venv/bin/python docs/images/make_core_screenshots.py``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_spatial_impute.io.datasets import bundled_paths, shared_data_dir

OUT = Path(__file__).resolve().parent


def wait(done, timeout: float = 300) -> None:
    """Process Qt events until ``done()`` is true."""
    t0 = time.time()
    while not done() and time.time() - t0 < timeout:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)


def save(viewer, name: str) -> None:
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    from matplotlib.image import imsave

    img = viewer.screenshot(canvas_only=False, flash=False)
    imsave(OUT / name, img)
    print("wrote", OUT / name, img.shape)


def main() -> int:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    _, load = viewer.window.add_plugin_dock_widget("napari-spatial-impute", "Load data")
    ref_path, sp_path = bundled_paths()
    load.reference_row.path.setText(str(ref_path))
    load.spatial_row.path.setText(str(sp_path))
    load.load()
    wait(lambda: load.reference_points is not None)
    viewer.reset_view()
    save(viewer, "load_widget.png")

    _, mapw = viewer.window.add_plugin_dock_widget(
        "napari-spatial-impute", "Map cells to space", tabify=True
    )
    mapw.run()  # the defaults: the ensemble map, nothing trained
    wait(lambda: mapw.worker is None)
    viewer.layers["spatial"].visible = False
    viewer.reset_view()
    save(viewer, "map_widget.png")

    # a long Tangram run, caught half-way, then cancelled: nothing is added
    n_layers = len(viewer.layers)
    mapw.form.method.value = "tangram"
    mapw.form.epochs.value = 3000
    mapw.run()
    wait(lambda: mapw.progress.value() >= 400)
    save(viewer, "map_widget_running.png")
    mapw.cancel()
    wait(lambda: mapw.worker is None)
    assert len(viewer.layers) == n_layers, "cancel added a layer"
    print("cancelled:", mapw.status.text())

    data = shared_data_dir()
    mop = data / "merfish_mop" / "spatial.h5ad" if data else None
    if mop is not None and mop.exists():
        v2 = napari.Viewer(show=True)
        v2.window.resize(1500, 950)
        _, load2 = v2.window.add_plugin_dock_widget("napari-spatial-impute", "Load data")
        load2.spatial_row.path.setText(str(mop))
        load2.load()
        wait(lambda: load2.status.text() == "Loaded.")
        load2.color_combo.setCurrentText("slice")
        v2.reset_view()
        save(v2, "load_widget_fovs.png")
        v2.close()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
