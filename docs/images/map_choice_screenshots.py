"""Make the screenshots of the map choice (``method="auto"``): the Map widget's status after a
default run of the bundled pair, and the Diagnostics widget's training panel of that result.

Run under a display::

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/images/map_choice_screenshots.py

Both are the widget alone (``widget.grab()``), in a shown 1920 x 1080 viewer.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_spatial_impute.io.datasets import bundled_paths
from napari_spatial_impute.plugin.widgets.diagnostics_widget import DiagnosticsWidget

OUT = Path(__file__).resolve().parent
PLUGIN = "napari-spatial-impute"


def wait(done, timeout: float = 300) -> None:
    """Process Qt events until ``done()`` is true, then a little longer."""
    t0 = time.time()
    while not done() and time.time() - t0 < timeout:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)


def main() -> int:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    _, load = viewer.window.add_plugin_dock_widget(PLUGIN, "Load data")
    ref_path, sp_path = bundled_paths()
    load.reference_row.path.setText(str(ref_path))
    load.spatial_row.path.setText(str(sp_path))
    load.load()
    wait(lambda: load.reference_points is not None)
    _, mapw = viewer.window.add_plugin_dock_widget(PLUGIN, "Map cells to space")
    mapw.run()  # the defaults: auto, the map chosen on held-out training genes
    wait(lambda: mapw.worker is None)
    print("status:", mapw.status.text())
    mapw.grab().save(str(OUT / "map_choice_status.png"))
    print("wrote", OUT / "map_choice_status.png")

    diag = DiagnosticsWidget(viewer)
    diag.resize(1700, 520)  # the five panels in one row
    diag.show()
    diag.tabs.setCurrentIndex(0)
    wait(lambda: diag.train_panel.ncols > 0)
    print("choice:", diag.choice_info.text())
    diag.grab().save(str(OUT / "diagnostics_map_choice.png"))
    print("wrote", OUT / "diagnostics_map_choice.png")
    diag.close()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
