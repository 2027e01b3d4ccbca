"""Open a mapping result in a napari viewer with the plugin's widgets docked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anndata as ad

PLUGIN = "napari-spatial-impute"
#: Widgets docked by :func:`open_result_in_napari`, in order (display names in ``napari.yaml``).
DOCKED = ("Load data", "Map cells to space", "Explore", "Diagnostics")


def show_result(viewer: Any, result: ad.AnnData, reference: ad.AnnData | None = None) -> list[Any]:
    """Add a result's layers (and the reference at its UMAP) to ``viewer``; fill the shared model.

    Returns
    -------
    The layers added.
    """
    from napari.layers import Points

    from napari_spatial_impute.plugin.sync import connect_model
    from napari_spatial_impute.viz.layers import (
        bounds_of,
        drawn_points,
        ensure_umap,
        guess_cluster_key,
        reference_layer,
        result_cluster_key,
        spatial_layers,
    )

    model = connect_model(viewer)
    data = spatial_layers(result, role="result")
    layers = [Points(d, **kw) for d, kw, _ in data]
    if reference is not None:
        key = result_cluster_key(result) or guess_cluster_key(reference)
        ensure_umap(reference)
        beside = bounds_of([drawn_points(layer) for layer in layers])
        ref = reference_layer(reference, cluster_key=key, beside=beside)
        layers.append(Points(ref[0], **ref[1]))
    for layer in layers:  # adding them tells the model (see _qt._sync.adopt_layer)
        viewer.add_layer(layer)
    if reference is not None and model.cluster_key is None:
        model.set_keys(cluster_key=guess_cluster_key(reference), fov_key=model.fov_key)
    return layers


def open_result_in_napari(
    path: str | os.PathLike[str],
    reference: ad.AnnData | str | os.PathLike[str] | None = None,
    *,
    run: bool = True,
) -> Any:
    """Open a result ``.h5ad`` in a new napari viewer with the plugin's widgets docked.

    Parameters
    ----------
    path
        A result file written by ``napari-spatial-impute map`` or ``demo``.
    reference
        The reference AnnData (or its file) for the UMAP layer and linked selections, optional.
    run
        Start napari's event loop (``napari.run()``); ``False`` returns the viewer at once.

    Returns
    -------
    The viewer.
    """
    import napari

    from napari_spatial_impute.io.files import read_h5ad
    from napari_spatial_impute.io.lazy import read_result_lazy

    result = read_result_lazy(path, "result")  # genes left in the file: read one when shown
    if reference is not None and not isinstance(reference, ad.AnnData):
        reference = read_h5ad(reference, "reference")
    viewer = napari.Viewer(title=f"napari-spatial-impute: {Path(path).name}")
    show_result(viewer, result, reference)
    for name in DOCKED:
        try:
            viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
        except Exception as exc:  # a missing optional widget must not stop the viewer
            print(f"napari-spatial-impute: could not dock {name!r}: {str(exc).splitlines()[0]}")
    if run:
        napari.run()
    return viewer
