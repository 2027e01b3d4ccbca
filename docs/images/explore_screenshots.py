"""Make the screenshots of docs/user-guide-explore.md (run under a display: ``xvfb-run -a``).

    xvfb-run -a python docs/images/explore_screenshots.py

Uses the bundled MERFISH hypothalamus pair (its spatial cells are split at the median x into two
illustrative FOVs) and, when ../shared/data is present, the iss_ca1 label image.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import napari
import numpy as np
import scanpy as sc
from qtpy.QtWidgets import QApplication

from napari_spatial_impute import cross_validate, load_merfish_hypothalamus, map_cells_to_space
from napari_spatial_impute.io.datasets import shared_data_dir
from napari_spatial_impute.plugin.model import get_model
from napari_spatial_impute.plugin.widgets.diagnostics_widget import DiagnosticsWidget
from napari_spatial_impute.plugin.widgets.explore_widget import ExploreWidget
from napari_spatial_impute.plugin.widgets.image_widget import ImageWidget
from napari_spatial_impute.plugin.widgets.linking import get_link_controller
from napari_spatial_impute.viz.layers import category_colors

OUT = Path(__file__).resolve().parent
warnings.simplefilter("ignore")


def settle(viewer, n: int = 5) -> None:
    for _ in range(n):
        QApplication.processEvents()


def save(viewer, name: str, reset: bool = False) -> None:
    settle(viewer)
    if reset:
        viewer.reset_view()
        settle(viewer)
    img = viewer.screenshot(canvas_only=False, flash=False)
    from imageio.v3 import imwrite

    imwrite(OUT / name, img)
    print("wrote", OUT / name, img.shape)


def merfish():
    ref, spa = load_merfish_hypothalamus()
    x = spa.obsm["spatial"][:, 0]
    spa.obs["fov"] = np.where(x < np.median(x), "1", "2")
    res = map_cells_to_space(ref, spa, cluster_key="cell_type").to_anndata()
    return ref, spa, res


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


def main() -> None:
    ref, spa, res = merfish()
    viewer = napari.Viewer(show=True, title="napari-spatial-impute: explore")
    viewer.window.resize(1500, 900)
    model = get_model(viewer)
    model.set_reference(ref)
    model.set_spatial(spa)
    model.set_keys(cluster_key="cell_type", fov_key="fov")
    model.set_result(res)
    explore = ExploreWidget(viewer)
    dock = viewer.window.add_dock_widget(explore, name="Explore", area="right")

    # 1. a gene, imputed and measured, both FOVs, side by side
    explore.gene_edit.setText("Gad1")
    explore.show_gene()
    explore.grid_check.setChecked(True)
    save(viewer, "explore_gene_fovs.png", reset=True)

    # 2. most likely cluster and one cluster's probability
    viewer.layers.clear()
    explore.show_predicted()
    explore.cluster_combo.setCurrentText("Mature oligodendrocyte")
    explore.show_cluster()
    save(viewer, "explore_clusters.png", reset=True)

    # 3. FOV navigator
    explore.grid_check.setChecked(False)
    viewer.layers.clear()
    explore.show_gene("Slc17a6")
    explore.go_to_fov("2")
    # hover a cell: its features (value, top imputed genes, top clusters) in the status bar
    for lay in viewer.layers:
        lay.visible = "imputed" in lay.name
    target = viewer.layers["Slc17a6 imputed · FOV 2"]
    viewer.layers.selection.active = target
    viewer.mouse_over_canvas = True
    viewer.cursor.position = tuple(target.data[len(target.data) // 2])
    viewer.update_status_from_cursor()
    save(viewer, "explore_fov_navigator.png")

    # 4. linking: select spatial cells, see their reference cells on the UMAP
    viewer.layers.clear()
    explore.measured_check.setChecked(False)
    explore.fov_list.item(0).setSelected(True)
    layer = explore.show_gene("Gad1")[0]
    yx = layer.data
    full = np.asarray(spa.obsm["spatial"])[:, ::-1]
    ref_layer = reference_umap(
        viewer, ref, offset=np.array([full[:, 0].min(), full[:, 1].max() + 200])
    )
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
    viewer.window.remove_dock_widget(dock)

    # 5. diagnostics (widget alone, sharper)
    viewer.layers.clear()
    model.set_cv_table(cross_validate(ref, spa, folds=5))
    diag = DiagnosticsWidget(viewer)
    diag.resize(1300, 560)
    diag.show()
    for i, name in enumerate(
        ["diagnostics_training.png", "diagnostics_validation.png", "diagnostics_cv.png"]
    ):
        diag.tabs.setCurrentIndex(i)
        settle(viewer, 10)
        diag.grab().save(str(OUT / name))
        print("wrote", OUT / name)
    diag.close()

    # 6. image-linked exploration on iss_ca1
    data = shared_data_dir()
    if data is not None and (data / "iss_ca1" / "label_image.coo.npz").exists():
        iref = ad.read_h5ad(data / "iss_ca1" / "reference_class_profiles.h5ad")
        ispa = ad.read_h5ad(data / "iss_ca1" / "spatial.h5ad")
        ires = map_cells_to_space(iref, ispa, cluster_key="cell_class").to_anndata()
        viewer2 = napari.Viewer(show=True, title="napari-spatial-impute: image")
        viewer2.window.resize(1500, 900)
        m2 = get_model(viewer2)
        m2.set_reference(iref)
        m2.set_spatial(ispa)
        m2.set_keys(cluster_key="cell_class")
        m2.set_result(ires)
        img = ImageWidget(viewer2)
        viewer2.window.add_dock_widget(img, name="Image", area="right")
        labels = img.open_labels(data / "iss_ca1" / "label_image.coo.npz")
        img.kind_combo.setCurrentText("imputed")
        img.value_edit.setText("Plp1")
        painted = img.paint()
        ex2 = ExploreWidget(viewer2)
        pts = ex2.show_gene("Plp1")
        for p in pts:
            p.visible = False
        viewer2.layers.move(viewer2.layers.index(labels), len(viewer2.layers) - 1)
        labels.opacity = 0.15
        xy = np.asarray(ispa.obsm["spatial"])
        high = ires[:, "Plp1"].X.ravel() > np.percentile(ires[:, "Plp1"].X, 95)
        middle = np.argmin(np.where(high, ((xy - np.median(xy, 0)) ** 2).sum(1), np.inf))
        yx = xy[middle, ::-1]

        class Click:
            position = tuple(yx)

        img._on_click(labels, Click())
        settle(viewer2)
        h, w = labels.data.shape
        ch, cw = viewer2.canvas.size
        viewer2.scene.camera.center = (h / 2, w / 2)
        viewer2.scene.camera.zoom = 0.95 * min(ch / h, cw / w)
        save(viewer2, "image_iss_ca1_painted.png")
        viewer2.scene.camera.center = tuple(yx)
        viewer2.scene.camera.zoom = 1.2
        save(viewer2, "image_iss_ca1_zoom.png")
        del painted

    # 7. CosMx: two FOVs, label images aligned to the spatial data (before any mapping)
    if data is not None and (data / "cosmx_lung" / "CellLabels_F002.tif").exists():
        from napari_spatial_impute.viz.layers import to_napari

        cspa = ad.read_h5ad(data / "cosmx_lung" / "spatial.h5ad")
        viewer3 = napari.Viewer(show=True, title="napari-spatial-impute: CosMx")
        viewer3.window.resize(1500, 900)
        m3 = get_model(viewer3)
        m3.set_spatial(cspa)
        m3.set_keys(fov_key="fov")
        img3 = ImageWidget(viewer3)
        viewer3.window.add_dock_widget(img3, name="Label images", area="right")
        for f in (2, 3):
            lab = img3.open_labels(data / "cosmx_lung" / f"CellLabels_F00{f}.tif")
            lab.opacity = 0.6
        counts = np.asarray(cspa.X.sum(1)).ravel()
        viewer3.add_points(
            to_napari(cspa, ndim=2),
            name="CosMx cells (total counts)",
            features={"total counts": counts.astype(np.float32)},
            face_color="total counts",
            face_colormap="viridis",
            size=25,
            border_color="white",
            border_width=0.15,
        )
        save(viewer3, "image_cosmx_two_fovs.png", reset=True)


if __name__ == "__main__":
    main()
