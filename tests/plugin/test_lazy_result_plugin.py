"""The Map widget's result and an opened result file hold their genes lazily (issue 24): the viewer
holds the map or the file, a gene is computed or read when shown, and saving writes every gene."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

import napari_spatial_impute as nsi
from napari_spatial_impute.core.export import result_to_anndata
from napari_spatial_impute.io.lazy import is_lazy
from napari_spatial_impute.plugin.reader import napari_get_reader
from napari_spatial_impute.plugin.sync import viewer_model
from napari_spatial_impute.plugin.widgets.map_widget import MapWidget
from napari_spatial_impute.plugin.writer import layers_to_anndata
from napari_spatial_impute.viz import explore as ex
from napari_spatial_impute.viz.layers import META_KEY


def test_map_widget_holds_a_lazy_result_that_saves_whole(
    make_napari_viewer_proxy, qtbot, merfish, tmp_path
):
    viewer = make_napari_viewer_proxy()
    ref, spa = merfish
    spa.obs["sample"] = pd.Categorical(
        np.where(spa.obsm["spatial"][:, 0] < np.median(spa.obsm["spatial"][:, 0]), "a", "b")
    )
    model = viewer_model(viewer)
    model.set_reference(ref)
    model.set_spatial(spa)
    model.set_keys(cluster_key="cell_type")
    w = MapWidget(viewer)
    qtbot.addWidget(w)
    w.form.method.value = "ensemble"
    worker = w.run()
    with qtbot.waitSignal(worker.finished, timeout=240_000):
        pass
    qtbot.waitUntil(lambda: w.worker is None and model.result is not None, timeout=10_000)
    result = model.result
    # before: X and the interval layers were numpy arrays of every gene at every cell
    assert is_lazy(result.X) and all(is_lazy(v) for v in result.layers.values())
    eager = result_to_anndata(
        nsi.map_cells_to_space(ref, spa, **w.parameters()),
    )
    gene = str(eager.var_names[7])
    np.testing.assert_array_equal(ex.values(result, "imputed", gene), eager[:, gene].X.ravel())
    # File > Save Selected Layers on the result's layers: every gene and interval written
    data = [(layer.data, layer.as_layer_data_tuple()[1], "points") for layer in viewer.layers]
    saved = layers_to_anndata(data)
    saved.write_h5ad(tmp_path / "saved.h5ad")
    back = ad.read_h5ad(tmp_path / "saved.h5ad")
    np.testing.assert_array_equal(back.X, eager.X)
    for key in eager.layers:
        np.testing.assert_array_equal(back.layers[key], eager.layers[key])


def test_reader_opens_a_result_file_lazily(merfish, tmp_path):
    ref, spa = merfish
    eager = result_to_anndata(nsi.map_cells_to_space(ref, spa, cluster_key="cell_type"))
    path = tmp_path / "result.h5ad"
    eager.write_h5ad(path)
    layers = napari_get_reader(str(path))(str(path))
    adata = layers[0][1]["metadata"][META_KEY]["adata"]
    assert is_lazy(adata.X) and all(is_lazy(v) for v in adata.layers.values())
    gene = str(eager.var_names[3])
    np.testing.assert_array_equal(ex.values(adata, "imputed", gene), eager[:, gene].X.ravel())
