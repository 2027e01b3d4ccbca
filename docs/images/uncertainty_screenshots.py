"""Make the uncertainty screenshots of docs/user-guide-explore.md (run under a display).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/images/uncertainty_screenshots.py

Same data as ``explore_screenshots.py`` (the bundled MERFISH hypothalamus pair and its default
map, one section). Writes ``explore_uncertainty.png`` (the whole window),
``diagnostics_reliability.png`` and ``diagnostics_cv.png`` (the CV table with its coverage,
width and predicted-Pearson columns; the widget alone).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_screenshots import (
    OUT,
    explore_viewer,
    layer_of,
    merfish,
    save,
    settle,
    show_tab,
    wait_idle,
)

from napari_spatial_impute import cross_validate
from napari_spatial_impute.plugin.sync import connect_model
from napari_spatial_impute.plugin.widgets.diagnostics_widget import DiagnosticsWidget

warnings.simplefilter("ignore")


def main() -> None:
    ref, spa, res = merfish()
    viewer, explore = explore_viewer("uncertainty", ref, spa, res, None, "")

    # Gad1 imputed (cells with a wide 90% interval greyed out) beside its interval width
    explore.measured_check.setChecked(False)
    explore.uncertainty.interval_check.setChecked(True)
    explore.uncertainty.mask_check.setChecked(True)
    explore.grid_check.setChecked(True)
    explore.gene_edit.setText("Gad1")
    explore.show_gene()
    wait_idle(explore)
    viewer.layers.selection.active = layer_of(viewer, "imputed")
    show_tab(explore, "Uncertainty")
    save(viewer, "explore_uncertainty.png", reset=True)

    # diagnostics: reliability tab (with a cross-validation to compare against) and the CV table
    viewer.layers.clear()
    # the intervals' coverage and predicted Pearson come with uncertainty=True
    connect_model(viewer).set_cv_table(cross_validate(ref, spa, folds=5, uncertainty=True))
    diag = DiagnosticsWidget(viewer)
    for name, tab, size in (
        ("diagnostics_reliability.png", "Reliability", (1300, 820)),
        ("diagnostics_cv.png", "Cross-validation", (1300, 560)),
    ):
        diag.resize(*size)
        diag.show()
        titles = [diag.tabs.tabText(i) for i in range(diag.tabs.count())]
        diag.tabs.setCurrentIndex(titles.index(tab))
        settle(20)
        diag.grab().save(str(OUT / name))
        print("wrote", OUT / name)
    diag.close()
    viewer.close()


if __name__ == "__main__":
    main()
