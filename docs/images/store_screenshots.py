"""Make the SpatialData screenshots of docs/user-guide-core.md (run under a display).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/images/store_screenshots.py

The real CosMx lung crops (``../shared/data/cosmx_lung``) become a SpatialData store
(:func:`~napari_spatial_impute.io.demo_stores.build_cosmx_lung_store`); the reference is a cell
split of the same table (every other cell, all 980 genes). Through the widgets, as a user would:
Load (the store: table and coordinate system), Map (the ensemble map), Explore (an imputed gene
with measured beside it: over the store's image the grid stays off and the measured layer is
added hidden; then the imputed gene alone over the composite image and the cell outlines), and
Write to store. Each screenshot is the whole 1920 x 1080 window.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import napari
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QApplication

from napari_spatial_impute.io.datasets import shared_data_dir
from napari_spatial_impute.io.demo_stores import build_cosmx_lung_store
from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget
from napari_spatial_impute.plugin.widgets.load_widget import LoadWidget
from napari_spatial_impute.plugin.widgets.map_widget import MapWidget
from napari_spatial_impute.viz.layers import plugin_meta

OUT = Path(__file__).resolve().parent
SIZE = (1920, 1080)
GENE = "COL1A1"
warnings.simplefilter("ignore")


def settle(n: int = 10) -> None:
    """Process Qt events, widgets deleted later included (the dock's old colour scales)."""
    for _ in range(n):
        QApplication.processEvents()
        QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


def layer_of(viewer: napari.Viewer, kind: str):
    """The Explore layer of ``kind`` (``"imputed"``, ``"measured"``): one for all samples."""
    return next(
        lay
        for lay in viewer.layers
        if plugin_meta(lay).get("kind") == kind and plugin_meta(lay).get("explore")
    )


def grab(viewer: napari.Viewer, name: str) -> None:
    """The whole window at 1920 x 1080 (it grows while a dock is unfolded; it fits again)."""
    viewer.window._qt_window.resize(*SIZE)
    settle(30)
    viewer.window._qt_window.grab().save(str(OUT / name))


def wait(done, timeout: float = 600) -> None:
    start = time.time()
    while not done():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.time() - start > timeout:
            raise TimeoutError
    settle()


def clusters(ref: ad.AnnData) -> list[str]:
    """Six k-means clusters of the reference (log-normalised, 20 PCs), seeded."""
    import numpy as np
    import scanpy as sc
    from sklearn.cluster import KMeans

    x = ref.copy()
    sc.pp.normalize_total(x)
    sc.pp.log1p(x)
    sc.pp.pca(x, n_comps=20, random_state=0)
    labels = KMeans(6, n_init=10, random_state=0).fit_predict(x.obsm["X_pca"])
    return [f"k{i}" for i in np.asarray(labels)]


def main() -> int:
    data = shared_data_dir()
    if data is None or not (data / "cosmx_lung" / "CellComposite").is_dir():
        print("../shared/data/cosmx_lung is not present; nothing to do")
        return 0
    tmp = Path(tempfile.mkdtemp())
    store = build_cosmx_lung_store(data, tmp / "lung.zarr")
    cells = ad.read_h5ad(data / "cosmx_lung" / "spatial.h5ad")
    ref = cells[::2].copy()
    del ref.obsm["spatial"]
    ref.obs["cell_type"] = clusters(ref)
    ref.write_h5ad(tmp / "reference.h5ad")

    viewer = napari.Viewer(show=True, title="napari-spatial-impute: CosMx store")
    viewer.window._qt_window.resize(*SIZE)
    load, mapw, explore = LoadWidget(viewer), MapWidget(viewer), ExploreWidget(viewer)
    viewer.window.add_dock_widget(load, name="Load data", area="right")
    viewer.window.add_dock_widget(mapw, name="Map cells to space", area="right")
    viewer.window.add_dock_widget(explore, name="Explore", area="right")
    # the ensemble map: auto shows (and may choose) Tangram, whose settings overflow 1080 px
    mapw.form.method.value = "ensemble"
    load.reference_row.path.setText(str(tmp / "reference.h5ad"))
    load.spatial_row.path.setText(str(store))
    wait(lambda: load.store_picker.info is not None)
    load.files_button.setChecked(True)
    load.load()
    wait(lambda: not load.busy and load.reference_points is not None)
    load.files_button.setChecked(True)
    settle()
    grab(viewer, "store_loaded.png")

    mapw.run()
    wait(lambda: not mapw.busy)
    load.files_button.setChecked(False)
    # measured beside imputed over the store's image: the grid stays off (it would part the
    # image from the cells), the measured layer comes hidden and the status says why
    explore.show_gene(GENE)
    wait(lambda: not explore.busy)
    viewer.layers.selection.active = layer_of(viewer, "measured")
    explore.navigator.show_all()  # Explore > FOVs > Whole section
    settle(30)
    grab(viewer, "store_measured_beside_imputed.png")

    # the imputed gene alone (measured unticked), written to the store
    explore.measured_check.setChecked(False)
    explore.show_gene(GENE)
    wait(lambda: not explore.busy)
    viewer.layers.selection.active = layer_of(viewer, "imputed")
    mapw.store_writer.write()
    wait(lambda: not mapw.busy)
    settle(30)
    grab(viewer, "store_imputed_over_composite.png")
    for name in ("loaded", "measured_beside_imputed", "imputed_over_composite"):
        print("wrote", OUT / f"store_{name}.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
