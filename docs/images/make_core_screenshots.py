"""Make the screenshots of the Load data and Map widgets used in docs/user-guide-core.md.

Run under a display::

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/images/make_core_screenshots.py

Arguments pick the parts (default both): ``widgets`` (the bundled pair: ``load_widget.png``,
``map_widget.png``, ``map_widget_running.png``) and ``samples`` (``load_widget_samples.png``, the
four merfish_mop slices in one layer; needs ../shared/data).

Every screenshot is the whole 1920 x 1080 window (``_qt_window.grab()``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_spatial_impute.io.datasets import bundled_paths, shared_data_dir

OUT = Path(__file__).resolve().parent
SIZE = (1920, 1080)
PLUGIN = "napari-spatial-impute"


def wait(done, timeout: float = 300) -> None:
    """Process Qt events until ``done()`` is true."""
    t0 = time.time()
    while not done() and time.time() - t0 < timeout:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)


def new_viewer() -> napari.Viewer:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(*SIZE)
    wait(lambda: True)
    return viewer


def save(viewer, name: str) -> None:
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    wait(lambda: True)
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # napari's pop-ups would cover the docks
    wait(lambda: True)
    viewer.window._qt_window.grab().save(str(OUT / name))
    print("wrote", OUT / name)


def main() -> int:
    which = set(sys.argv[1:]) or {"widgets", "samples"}
    if "widgets" in which:
        widgets()
    if "samples" in which:
        samples()
    return 0


def widgets() -> None:
    """Load and Map of the bundled pair: load_widget.png, map_widget.png, map_widget_running.png."""
    viewer = new_viewer()
    _, load = viewer.window.add_plugin_dock_widget(PLUGIN, "Load data")
    ref_path, sp_path = bundled_paths()
    load.reference_row.path.setText(str(ref_path))
    load.spatial_row.path.setText(str(sp_path))
    load.load()
    wait(lambda: load.reference_points is not None)
    load.files_button.setChecked(True)  # loading folded the file choices: unfold them here
    viewer.reset_view()
    save(viewer, "load_widget.png")

    # Load (folded again) and Map docked together
    load.files_button.setChecked(False)
    _, mapw = viewer.window.add_plugin_dock_widget(PLUGIN, "Map cells to space")
    mapw.run()  # the defaults: the ensemble map, nothing trained
    wait(lambda: mapw.worker is None)
    for layer in viewer.layers:
        layer.visible = layer.name != "spatial"
    viewer.reset_view()
    save(viewer, "map_widget.png")

    # a long Tangram run, caught under way, then cancelled: nothing is added
    n_layers = len(viewer.layers)
    mapw.form.method.value = "tangram"
    mapw.form.epochs.value = 3000
    mapw.run()
    # caught early: Tangram stops at a plateau (about 190 epochs on this pair), not at 3,000
    wait(lambda: mapw.progress.value() >= 80 or mapw.worker is None)
    assert mapw.worker is not None, "the run ended before the screenshot"
    save(viewer, "map_widget_running.png")
    mapw.cancel()
    wait(lambda: mapw.worker is None)
    assert len(viewer.layers) == n_layers, "cancel added a layer"
    print("cancelled:", mapw.status.text())
    viewer.close()


def samples() -> None:
    """Four sections in the same coordinates: one layer, laid out side by side, coloured by
    slice (load_widget_samples.png; needs ../shared/data/merfish_mop)."""
    data = shared_data_dir()
    mop = data / "merfish_mop" / "spatial.h5ad" if data else None
    if mop is not None and mop.exists():
        v2 = new_viewer()
        _, load2 = v2.window.add_plugin_dock_widget(PLUGIN, "Load data")
        load2.spatial_row.path.setText(str(mop))
        load2.load()
        wait(lambda: load2.status.text() == "Loaded." and len(v2.layers) > 0)
        load2.color_combo.setCurrentText("slice")  # recoloured in a worker
        wait(lambda: not load2.busy)
        v2.reset_view()
        save(v2, "load_widget_samples.png")
        v2.close()


if __name__ == "__main__":
    sys.exit(main())
