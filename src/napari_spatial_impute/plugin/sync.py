"""Keep the shared model in step with the plugin layers of a viewer (public napari API only).

Layers opened by the reader or as sample data carry their AnnData in
``layer.metadata['spatial_impute']``; when such a layer is added, the model learns its data set
(result, spatial data or reference), so every widget sees it without finding the others.
"""

from __future__ import annotations

import weakref
from typing import Any

from napari_spatial_impute.io.files import find_fov_key
from napari_spatial_impute.plugin.model import SpatialImputeModel, get_model
from napari_spatial_impute.viz.layers import plugin_meta, result_cluster_key, source_adata
from napari_spatial_impute.viz.rasters import RASTER_KINDS, style_raster_layer

_CONNECTED: weakref.WeakSet[SpatialImputeModel] = weakref.WeakSet()


def viewer_model(viewer: Any) -> SpatialImputeModel:
    """The shared model of ``viewer``, keyed by the real viewer behind napari's proxy.

    napari gives each dock widget its own ``PublicOnlyProxy``; keying the model by the viewer
    itself keeps one model for all widgets for the viewer's whole life.
    """
    return get_model(getattr(viewer, "__wrapped__", viewer))


def adopt_layer(model: SpatialImputeModel, layer: Any) -> None:
    """Tell ``model`` about the data set of a plugin layer it does not know yet.

    A store's image or labels layer (reader or Load widget) gets its style here: napari's layer
    constructors take no ``contour``, so outlines are set once the layer exists.
    """
    meta = plugin_meta(layer)
    if meta.get("kind") in RASTER_KINDS:
        style_raster_layer(layer)
    adata, role = source_adata(layer), meta.get("role")
    if adata is None:
        return
    if role == "result" and model.result is not adata:
        model.set_keys(
            cluster_key=result_cluster_key(adata) or model.cluster_key,
            fov_key=meta.get("fov_key") or find_fov_key(adata),
            sample_key=meta.get("sample_key") or model.sample_key,
        )
        model.set_result(adata)
    elif role == "spatial" and model.spatial is not adata:
        model.set_spatial(adata)
        model.set_keys(
            cluster_key=model.cluster_key,
            fov_key=meta.get("fov_key"),
            sample_key=meta.get("sample_key") or "",
        )
    elif role == "reference" and model.reference is not adata:
        model.set_reference(adata)
        if meta.get("cluster_key"):
            model.set_keys(cluster_key=meta["cluster_key"], fov_key=model.fov_key)


def connect_model(viewer: Any) -> SpatialImputeModel:
    """The viewer's model, adopting present and future plugin layers (idempotent)."""
    model = viewer_model(viewer)
    if model not in _CONNECTED:
        _CONNECTED.add(model)
        for layer in list(viewer.layers):
            adopt_layer(model, layer)
        model_ref = weakref.ref(model)

        def _on_inserted(event: Any) -> None:
            m = model_ref()
            if m is not None:
                adopt_layer(m, event.value)

        viewer.layers.events.inserted.connect(_on_inserted)
        from napari_spatial_impute.plugin.cell_shapes import connect_cell_painter

        connect_cell_painter(viewer)  # a store's cells coloured by what Explore shows
    return model


def current_viewer() -> Any:
    """napari's current viewer, or ``None`` (none open, or napari not importable)."""
    try:
        import napari

        return napari.current_viewer()
    except Exception:
        return None


def hook_current_viewer() -> None:
    """Connect the model of napari's current viewer, if any, so layers about to be added are adopted.

    The reader and the sample-data commands call this: napari adds their layers to the current
    viewer after they return, and the model then learns their data sets even before any of the
    plugin's widgets is opened. Does nothing without a viewer (e.g. in scripts).
    """
    viewer = current_viewer()
    if viewer is not None:
        connect_model(viewer)


def open_results() -> list[Any]:
    """The mapping results open in the plugin: the current viewer's first, then every other
    connected viewer's (the writer saves the result a value layer shows from here)."""
    models: list[SpatialImputeModel] = []
    viewer = current_viewer()
    if viewer is not None:
        models.append(viewer_model(viewer))
    models.extend(m for m in list(_CONNECTED) if m not in models)
    return [m.result for m in models if m.result is not None]
