"""Shared state of the plugin's widgets: one small observable object per viewer (no Qt).

Widgets never find each other; they read and write this model and connect to its signals.
"""

from __future__ import annotations

import weakref
from typing import Any

import anndata as ad
from psygnal import Signal


class SpatialImputeModel:
    """What the plugin knows for one viewer.

    Attributes
    ----------
    reference
        The reference AnnData (single cells, all genes) or ``None``.
    spatial
        The spatial AnnData (``obsm["spatial"]``) or ``None``.
    result
        The result AnnData of a mapping (see :mod:`napari_spatial_impute.core.export`) or ``None``.
    cluster_key
        Reference obs column with clusters, or ``None``.
    fov_key
        Spatial obs column with fields of view, or ``None`` (one FOV).
    cv_table
        Cross-validation table (DataFrame) when one was run, else ``None``.
    """

    reference_changed = Signal(object)
    spatial_changed = Signal(object)
    result_changed = Signal(object)
    keys_changed = Signal()
    cv_changed = Signal(object)

    def __init__(self) -> None:
        self.reference: ad.AnnData | None = None
        self.spatial: ad.AnnData | None = None
        self.result: ad.AnnData | None = None
        self.cluster_key: str | None = None
        self.fov_key: str | None = None
        self.cv_table: Any = None

    def set_reference(self, adata: ad.AnnData | None) -> None:
        """Replace the reference and clear a result that no longer matches."""
        self.reference = adata
        self.reference_changed.emit(adata)

    def set_spatial(self, adata: ad.AnnData | None) -> None:
        """Replace the spatial data."""
        self.spatial = adata
        self.spatial_changed.emit(adata)

    def set_result(self, adata: ad.AnnData | None) -> None:
        """Store a finished mapping result."""
        self.result = adata
        self.result_changed.emit(adata)

    def set_keys(self, cluster_key: str | None = None, fov_key: str | None = None) -> None:
        """Set the cluster and FOV columns."""
        self.cluster_key = cluster_key
        self.fov_key = fov_key
        self.keys_changed.emit()

    def set_cv_table(self, table: Any) -> None:
        """Store a cross-validation table."""
        self.cv_table = table
        self.cv_changed.emit(table)


_MODELS: weakref.WeakKeyDictionary[Any, SpatialImputeModel] = weakref.WeakKeyDictionary()


def get_model(viewer: Any) -> SpatialImputeModel:
    """The model shared by all the plugin's widgets of ``viewer`` (created on first use).

    napari hands each docked widget its own proxy of the viewer; the model is keyed by the
    viewer behind the proxy (``__wrapped__``), so every widget of one viewer shares one model.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    model = _MODELS.get(viewer)
    if model is None:
        model = SpatialImputeModel()
        _MODELS[viewer] = model
    return model
