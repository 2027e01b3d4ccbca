"""Make the screenshots of docs/user-guide-explore.md (run under a display).

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/images/explore_screenshots.py

Two data sets:

* seeded synthetic sections (``benchmarks/seed_shape.py``: 8,000 cells in 4 samples of 6 FOVs
  each, every sample in the same coordinates, 1,500 reference cells, 300 genes of which 60 are
  measured): the samples laid out side by side and the FOV navigator;
* the bundled MERFISH hypothalamus pair (750 cells, one section): a gene imputed and measured
  side by side, the clusters, linked selections, the diagnostics; and, when ../shared/data is
  present, the iss_ca1 and CosMx label images.

Every screenshot is the whole 1920 x 1080 window (``_qt_window.grab()``), except the diagnostics
ones (the widget alone).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import napari
import numpy as np
import scanpy as sc
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QApplication

from napari_spatial_impute import cross_validate, load_merfish_hypothalamus, map_cells_to_space
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.io.datasets import shared_data_dir
from napari_spatial_impute.plugin.sync import connect_model
from napari_spatial_impute.plugin.widgets.diagnostics_widget import DiagnosticsWidget
from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget
from napari_spatial_impute.plugin.widgets.image_widget import ImageWidget
from napari_spatial_impute.plugin.widgets.linking import get_link_controller
from napari_spatial_impute.viz.layers import (
    category_colors,
    drawn_points,
    plugin_meta,
    point_size,
)
from napari_spatial_impute.viz.sections import display_yx

OUT = Path(__file__).resolve().parent
ROOT = OUT.parents[1]
SIZE = (1920, 1080)
warnings.simplefilter("ignore")


def show_tab(explore: ExploreWidget, title: str) -> None:
    """Bring one of the Explore widget's tabs to the front, found by its title."""
    titles = [explore.tabs.tabText(i) for i in range(explore.tabs.count())]
    explore.tabs.setCurrentIndex(titles.index(title))


def settle(n: int = 10) -> None:
    """Process Qt events, widgets deleted later included (processEvents alone leaves them: the
    Explore dock's old colour scales would be drawn under the new ones)."""
    for _ in range(n):
        QApplication.processEvents()
        QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


def new_viewer(title: str) -> napari.Viewer:
    viewer = napari.Viewer(show=True, title=title)
    viewer.window._qt_window.resize(*SIZE)
    settle()
    return viewer


def save(viewer: napari.Viewer, name: str, reset: bool = False) -> None:
    """Grab the whole window (docks, layer list, canvas, status bar) into ``OUT / name``."""
    settle()
    if reset:
        viewer.reset_view()
        settle()
    viewer.window._qt_window.grab().save(str(OUT / name))
    print("wrote", OUT / name)


def merfish():
    """The bundled pair and its default (ensemble) map; one section, no FOV column."""
    ref, spa = load_merfish_hypothalamus()
    res = result_to_anndata(map_cells_to_space(ref, spa, cluster_key="cell_type"))
    return ref, spa, res


def sections():
    """Synthetic sections: 4 samples sharing coordinates, 6 FOVs each, and their default map."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from seed_shape import make_pair

    ref, spa = make_pair(
        n_cells=8000, n_fovs=24, n_samples=4, n_reference=1500, n_genes=300, n_panel=60
    )
    res = result_to_anndata(map_cells_to_space(ref, spa, cluster_key="cell_type"))
    return ref, spa, res


def explore_viewer(title: str, ref, spa, res, fov_key: str | None, sample_key: str | None):
    """A viewer whose shared model holds the data and the result, with the Explore widget docked."""
    viewer = new_viewer(title)
    model = connect_model(viewer)
    model.set_reference(ref)
    model.set_spatial(spa)
    model.set_keys(cluster_key="cell_type", fov_key=fov_key, sample_key=sample_key)
    model.set_result(res)
    explore = ExploreWidget(viewer)
    viewer.window.add_dock_widget(explore, name="Explore", area="right")
    settle()
    return viewer, explore


def wait_idle(explore: ExploreWidget) -> None:
    """Process Qt events until the Explore widget's worker (above its async size) is done."""
    while explore.busy:
        QApplication.processEvents()
        time.sleep(0.02)
    settle()


def layer_of(viewer: napari.Viewer, kind: str):
    """The Explore layer of ``kind`` (``"imputed"``, ``"measured"``...): one for all samples."""
    return next(
        lay
        for lay in viewer.layers
        if plugin_meta(lay).get("kind") == kind and plugin_meta(lay).get("explore")
    )


def hover(viewer: napari.Viewer, layer, index: int) -> None:
    """Put the cursor on point ``index`` of ``layer`` (where it is drawn) and update the status."""
    viewer.layers.selection.active = layer
    viewer.mouse_over_canvas = True
    viewer.cursor.position = tuple(drawn_points(layer)[index])
    viewer.update_status_from_cursor()


def shot_sections() -> None:
    """Samples sharing coordinates, laid out side by side; the FOV navigator."""
    ref, spa, res = sections()
    viewer, explore = explore_viewer("samples side by side", ref, spa, res, "fov", "sample")
    # a gene expressed in most of the synthetic cell-type bands (seeded data: always the same)
    gene = "Gene0211"
    explore.measured_check.setChecked(False)
    # the default point size comes from the cell spacing of all samples stacked in the file's
    # coordinates (half the spacing within a section here); the Display tab's size fits one
    explore.size_spin.setValue(point_size(display_yx(res, None, "sample")))
    explore.gene_edit.setText(gene)
    explore.show_gene()  # one layer for all samples; the FOV outline layer comes with it
    wait_idle(explore)
    viewer.layers.selection.active = layer_of(viewer, "imputed")
    save(viewer, "explore_gene_samples.png", reset=True)

    # the navigator: find FOVs of sample s1, go to one, the others dimmed; hover a cell there
    show_tab(explore, "FOVs")
    nav = explore.navigator
    nav.others.setCurrentText("dimmed")
    nav.search.setText("s1_")
    explore.go_to_fov("s1_4")
    viewer.camera.zoom *= 0.6  # zoomed out a little: the neighbouring FOVs, dimmed
    layer = layer_of(viewer, "imputed")  # all samples in one layer, side by side
    fovs = layer.features["fov"].astype(str).to_numpy()
    inside = np.flatnonzero(fovs == "s1_4")
    center = drawn_points(layer)[inside].mean(0)
    pick = inside[np.argmin(((drawn_points(layer)[inside] - center) ** 2).sum(1))]
    hover(viewer, layer, int(pick))
    save(viewer, "explore_fov_navigator.png")
    viewer.close()


def reference_umap(viewer, ref, offset):
    work = ref.copy()
    sc.pp.normalize_total(work)
    sc.pp.log1p(work)
    sc.pp.pca(work, n_comps=20)
    sc.pp.neighbors(work)
    sc.tl.umap(work, random_state=0)
    um = work.obsm["X_umap"]
    um = (um - um.min(0)) / np.ptp(um, 0) * 1800
    colors = category_colors(ref.obs["cell_type"].cat.categories)
    return viewer.add_points(
        um[:, ::-1] + offset,
        name="reference UMAP",
        features={"cell_type": ref.obs["cell_type"].astype(str).astype("category").to_numpy()},
        face_color="cell_type",
        face_color_cycle=colors,
        size=25,
        border_width=0,
        metadata={"spatial_impute": {"kind": "reference"}},
    )


def shot_merfish() -> None:
    """One real section: side by side grid, clusters, linked selections, diagnostics."""
    ref, spa, res = merfish()
    viewer, explore = explore_viewer("explore", ref, spa, res, None, "")

    # 1. Gad1 imputed | measured: one grid cell per role, linked cameras
    explore.gene_edit.setText("Gad1")
    explore.show_gene()
    show_tab(explore, "Display")
    explore.grid_check.setChecked(True)
    save(viewer, "explore_side_by_side.png", reset=True)

    # 2. one cluster's probability | the most likely cluster
    viewer.layers.clear()
    show_tab(explore, "Values")
    explore.cluster_combo.setCurrentText("Mature oligodendrocyte")
    explore.show_cluster()
    explore.show_predicted()
    save(viewer, "explore_clusters.png", reset=True)

    # 3. linking: select spatial cells, see their reference cells on the UMAP
    explore.grid_check.setChecked(False)
    viewer.layers.clear()
    explore.measured_check.setChecked(False)
    layer = explore.show_gene("Gad1")[0]
    yx = np.asarray(layer.data)
    ref_layer = reference_umap(viewer, ref, offset=np.array([yx[:, 0].min(), yx[:, 1].max() + 200]))
    viewer.layers.selection.active = layer
    layer.mode = "select"
    center = np.median(yx, 0)
    near = np.argsort(((yx - center) ** 2).sum(1))[:25]
    layer.selected_data = set(near.tolist())
    get_link_controller(viewer).flush()
    save(viewer, "explore_linking_spatial_to_reference.png", reset=True)
    # reverse: select reference cells of one type
    labels = ref.obs["cell_type"].astype(str).to_numpy()
    viewer.layers.selection.active = ref_layer
    ref_layer.selected_data = set(np.flatnonzero(labels == "Inhibitory")[:60].tolist())
    get_link_controller(viewer).flush()
    viewer.layers.selection.active = ref_layer
    save(viewer, "explore_linking_reference_to_space.png")

    # 4. diagnostics (widget alone, sharper)
    viewer.layers.clear()
    connect_model(viewer).set_cv_table(cross_validate(ref, spa, folds=5))
    diag = DiagnosticsWidget(viewer)
    diag.resize(1300, 560)
    diag.show()
    # diagnostics_cv.png (with the intervals' columns) comes from uncertainty_screenshots.py
    for i, name in enumerate(["diagnostics_training.png", "diagnostics_validation.png"]):
        diag.tabs.setCurrentIndex(i)
        settle(20)
        diag.grab().save(str(OUT / name))
        print("wrote", OUT / name)
    diag.close()
    viewer.close()


def shot_labels() -> None:
    """Label images: iss_ca1 painted and clicked; CosMx FOVs aligned (when the data are here)."""
    data = shared_data_dir()
    if data is not None and (data / "iss_ca1" / "label_image.coo.npz").exists():
        iref = ad.read_h5ad(data / "iss_ca1" / "reference_class_profiles.h5ad")
        ispa = ad.read_h5ad(data / "iss_ca1" / "spatial.h5ad")
        ires = result_to_anndata(map_cells_to_space(iref, ispa, cluster_key="cell_class"))
        viewer = new_viewer("label images")
        model = connect_model(viewer)
        model.set_reference(iref)
        model.set_spatial(ispa)
        model.set_keys(cluster_key="cell_class")
        model.set_result(ires)
        img = ImageWidget(viewer)
        viewer.window.add_dock_widget(img, name="Label images", area="right")
        labels = img.open_labels(data / "iss_ca1" / "label_image.coo.npz")
        img.kind_combo.setCurrentText("imputed")
        img.value_edit.setText("Plp1")
        img.paint()
        viewer.layers.move(viewer.layers.index(labels), len(viewer.layers) - 1)
        labels.opacity = 0.15
        xy = np.asarray(ispa.obsm["spatial"])
        plp1 = np.asarray(ires[:, "Plp1"].X).ravel()
        high = plp1 > np.percentile(plp1, 95)
        middle = np.argmin(np.where(high, ((xy - np.median(xy, 0)) ** 2).sum(1), np.inf))
        yx = xy[middle, ::-1]

        class Click:
            position = tuple(yx)

        img._on_click(labels, Click())
        settle()
        h, w = labels.data.shape
        ch, cw = viewer.canvas.size
        viewer.scene.camera.center = (h / 2, w / 2)
        viewer.scene.camera.zoom = 0.95 * min(ch / h, cw / w)
        save(viewer, "image_iss_ca1_painted.png")
        viewer.scene.camera.center = tuple(yx)
        viewer.scene.camera.zoom = 1.6
        save(viewer, "image_iss_ca1_zoom.png")
        viewer.close()

    # CosMx: two FOVs, label images aligned to the spatial data (before any mapping)
    if data is not None and (data / "cosmx_lung" / "CellLabels_F002.tif").exists():
        from napari_spatial_impute.viz.coords import to_napari

        cspa = ad.read_h5ad(data / "cosmx_lung" / "spatial.h5ad")
        viewer = new_viewer("CosMx")
        model = connect_model(viewer)
        model.set_spatial(cspa)
        model.set_keys(fov_key="fov", sample_key="")
        img = ImageWidget(viewer)
        viewer.window.add_dock_widget(img, name="Label images", area="right")
        for f in (2, 3):
            lab = img.open_labels(data / "cosmx_lung" / f"CellLabels_F00{f}.tif")
            lab.opacity = 0.6
        counts = np.asarray(cspa.X.sum(1)).ravel()
        viewer.add_points(
            to_napari(cspa, ndim=2),
            name="CosMx cells (total counts)",
            features={"total counts": counts.astype(np.float32)},
            face_color="total counts",
            face_colormap="viridis",
            size=25,
            border_color="white",
            border_width=0.15,
        )
        save(viewer, "image_cosmx_two_fovs.png", reset=True)
        viewer.close()


def main() -> None:
    which = set(sys.argv[1:]) or {"sections", "merfish", "labels"}
    if "sections" in which:
        shot_sections()
    if "merfish" in which:
        shot_merfish()
    if "labels" in which:
        shot_labels()


if __name__ == "__main__":
    main()
