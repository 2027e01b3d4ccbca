"""Shared state of the plugin's widgets: one small observable object per viewer (no Qt).

Widgets never find each other; they read and write this model and connect to its signals.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import EllipsisType
from typing import Any, TypeVar

import anndata as ad
import numpy as np
from psygnal import Signal


@dataclass(frozen=True)
class ShownValues:
    """One shown value per result row, as the Explore widget coloured it.

    Attributes
    ----------
    kind
        ``"imputed"``, ``"measured"``, ``"interval"``, ``"probability"`` or ``"predicted"``.
    name
        The gene or cluster (``""`` for the most likely cluster).
    values
        One value per row of the result (float32; ``nan`` where there is none), or category
        codes (int) for ``"predicted"``.
    rgba
        The colour of each row (``(n, 4)`` float32 in 0..1), exactly what the points show.
    limits
        The contrast limits used (``None`` for categories).
    colormap
        The colormap's name (``None`` for categories).
    categories
        The category names for ``"predicted"`` (codes index into them), else ``None``.
    """

    kind: str
    name: str
    values: np.ndarray
    rgba: np.ndarray
    limits: tuple[float, float] | None = None
    colormap: str | None = None
    categories: tuple[str, ...] | None = None


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
    sample_key
        Spatial obs column with samples (sections, laid out side by side when they share
        coordinates; a feature column of the layers), ``""`` for none,
        or ``None`` to find one by its usual names
        (:func:`~napari_spatial_impute.io.files.find_sample_key`).
    cv_table
        Cross-validation table (DataFrame) when one was run, else ``None``.
    shown
        What the Explore widget shows now (:class:`ShownValues`), or ``None``; ``shown_changed``
        is emitted with it whenever a gene, probability or cluster is shown, so that other views
        of the same cells (a store's labels or shapes) colour themselves the same way.
    """

    reference_changed = Signal(object)
    spatial_changed = Signal(object)
    result_changed = Signal(object)
    keys_changed = Signal()
    cv_changed = Signal(object)
    shown_changed = Signal(object)

    def __init__(self) -> None:
        self.reference: ad.AnnData | None = None
        self.spatial: ad.AnnData | None = None
        self.result: ad.AnnData | None = None
        self.cluster_key: str | None = None
        self.fov_key: str | None = None
        self.sample_key: str | None = None
        self.cv_table: Any = None
        self.shown: ShownValues | None = None

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

    def set_keys(
        self,
        cluster_key: str | None = None,
        fov_key: str | None = None,
        sample_key: str | None | EllipsisType = ...,
    ) -> None:
        """Set the cluster, FOV and (unless left out) sample columns."""
        self.cluster_key = cluster_key
        self.fov_key = fov_key
        if not isinstance(sample_key, EllipsisType):
            self.sample_key = sample_key
        self.keys_changed.emit()

    def set_cv_table(self, table: Any) -> None:
        """Store a cross-validation table."""
        self.cv_table = table
        self.cv_changed.emit(table)

    def set_shown(self, shown: ShownValues | None) -> None:
        """Record what the Explore widget shows now (main thread) and tell the listeners."""
        self.shown = shown
        self.shown_changed.emit(shown)


_T = TypeVar("_T")


def per_viewer(factory: Callable[[Any], _T]) -> Callable[[Any], _T]:
    """``get(viewer)``: the one object ``factory(viewer)`` made for that viewer (on first use).

    napari hands each docked widget its own proxy of the viewer; objects are keyed by the viewer
    behind the proxy (``__wrapped__``), so every widget of one viewer shares one object.
    """
    store: weakref.WeakKeyDictionary[Any, _T] = weakref.WeakKeyDictionary()

    def get(viewer: Any) -> _T:
        real = getattr(viewer, "__wrapped__", viewer)
        obj = store.get(real)
        if obj is None:
            obj = factory(real)
            store[real] = obj
        return obj

    return get


_model_of = per_viewer(lambda _viewer: SpatialImputeModel())


def get_model(viewer: Any) -> SpatialImputeModel:
    """The model shared by all the plugin's widgets of ``viewer`` (created on first use; see
    :func:`per_viewer`)."""
    return _model_of(viewer)
