"""Make the uncertainty screenshots of docs/user-guide-explore.md (run under a display).

    xvfb-run -a python docs/images/uncertainty_screenshots.py

Same data as ``explore_screenshots.py`` (the bundled MERFISH hypothalamus pair, the default map, its
spatial cells split at the median x into two FOVs). Writes ``explore_uncertainty.png``,
``diagnostics_reliability.png`` and ``diagnostics_cv.png`` (the CV table with its coverage,
width and predicted-Pearson columns).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import napari

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_screenshots import OUT, merfish, save, settle

from napari_spatial_impute import cross_validate
from napari_spatial_impute.plugin.model import get_model
from napari_spatial_impute.plugin.widgets.diagnostics_widget import DiagnosticsWidget
from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget

warnings.simplefilter("ignore")


def main() -> None:
    ref, spa, res = merfish()
    viewer = napari.Viewer(show=True, title="napari-spatial-impute: uncertainty")
    viewer.window.resize(1500, 950)
    model = get_model(viewer)
    model.set_reference(ref)
    model.set_spatial(spa)
    model.set_keys(cluster_key="cell_type", fov_key="fov")
    model.set_result(res)
    explore = ExploreWidget(viewer)
    dock = viewer.window.add_dock_widget(explore, name="Explore", area="right")

    # Gad1 imputed (cells with a wide 90% interval greyed out) above its interval width
    explore.measured_check.setChecked(False)
    explore.uncertainty.interval_check.setChecked(True)
    explore.uncertainty.mask_check.setChecked(True)
    explore.show_gene("Gad1")
    viewer.grid.enabled = True
    viewer.grid.stride = 1
    save(viewer, "explore_uncertainty.png", reset=True)
    viewer.window.remove_dock_widget(dock)

    # diagnostics: reliability tab (with a cross-validation to compare against) and the CV table
    viewer.layers.clear()
    model.set_cv_table(cross_validate(ref, spa, folds=5))
    diag = DiagnosticsWidget(viewer)
    for name, tab, size in (
        ("diagnostics_reliability.png", "Reliability", (1300, 820)),
        ("diagnostics_cv.png", "Cross-validation", (1300, 560)),
    ):
        diag.resize(*size)
        diag.show()
        titles = [diag.tabs.tabText(i) for i in range(diag.tabs.count())]
        diag.tabs.setCurrentIndex(titles.index(tab))
        settle(viewer, 10)
        diag.grab().save(str(OUT / name))
        print("wrote", OUT / name)
    diag.close()


if __name__ == "__main__":
    main()
