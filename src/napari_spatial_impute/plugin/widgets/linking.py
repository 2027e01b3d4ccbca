"""Linked selections between spatial layers and the reference (UMAP) layer.

* Selecting spatial cells (``layer.selected_data`` of an exploration layer) highlights the
  reference cells they map to on the reference layer (metadata ``kind == "reference"``)
  in a ``"linked reference cells"`` layer drawn over it.
* Selecting reference cells shows where their (most frequent) cluster maps: its probability
  layers of every sample, plus a ``"linked spatial cells"`` layer marking the spatial cells whose
  best mapped unit is one of the selected reference cells.

One controller per viewer (:func:`get_link_controller`); the widgets install it. Events are
coalesced with a short timer so dragging a selection box stays responsive.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Layer, Points
from qtpy.QtCore import QObject, QTimer

from napari_spatial_impute.plugin.model import get_model, per_viewer
from napari_spatial_impute.plugin.widgets.layer_ops import (
    as_rows,
    find_layers,
    notify_error,
    open_cluster,
)
from napari_spatial_impute.viz.explore import (
    dominant_cluster,
    reference_weights,
    spatial_rows_for_reference,
    unit_matrix,
)
from napari_spatial_impute.viz.layers import (
    HIGHLIGHT_ROLE,
    REFERENCE_ROLE,
    make_meta,
    plugin_meta,
    point_size,
    result_cluster_key,
)
from napari_spatial_impute.viz.sections import display_yx, resolve_fov_key, resolve_sample_key

SPATIAL_ROLES = ("imputed", "measured", "probability", "predicted", "spatial")
REFERENCE_HIGHLIGHT = "linked reference cells"
SPATIAL_HIGHLIGHT = "linked spatial cells"
HIGHLIGHT_COLOR = "#ff2d2d"
#: Metadata key naming which highlight a layer is (:data:`REFERENCE_HIGHLIGHT` or
#: :data:`SPATIAL_HIGHLIGHT`).
HIGHLIGHT_KEY = "highlight"


def _reference_rows_of_points(layer: Layer, indices: np.ndarray) -> np.ndarray:
    rows = plugin_meta(layer).get("rows")
    return indices if rows is None else np.asarray(rows, dtype=np.int64)[indices]


def _points_of_reference_rows(layer: Layer, rows: np.ndarray) -> np.ndarray:
    """Point indices of the reference layer that show the given reference rows."""
    stored = plugin_meta(layer).get("rows")
    if stored is None:
        return rows[rows < len(layer.data)]
    lookup = pd.Series(np.arange(len(stored)), index=np.asarray(stored, dtype=np.int64))
    return lookup.reindex(rows).dropna().to_numpy(dtype=np.int64)


class LinkController(QObject):
    """Keeps the linked highlights of one viewer up to date.

    Parameters
    ----------
    viewer
        The napari viewer.
    """

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer
        self.model = get_model(viewer)
        self.enabled = True
        #: Reference cells highlighted at most (those with the largest mapped shares).
        self.max_reference_cells = 50
        self._units: Any = None
        self._units_key: tuple[int, int] | None = None
        self._pending: weakref.ref | None = None
        self._linked_cluster_layers: list[Layer] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(60)
        self._timer.timeout.connect(self.flush)
        self._watched: weakref.WeakSet = weakref.WeakSet()
        viewer.layers.events.inserted.connect(self._on_inserted)
        for layer in viewer.layers:
            self._watch(layer)

    # ------------------------------------------------------------------ wiring
    def _on_inserted(self, event: Any) -> None:
        self._watch(event.value)

    def _watch(self, layer: Layer) -> None:
        role = plugin_meta(layer).get("kind")
        if not isinstance(layer, Points) or layer in self._watched:
            return
        if role not in SPATIAL_ROLES and role != REFERENCE_ROLE:
            return
        self._watched.add(layer)
        ref = weakref.ref(layer)

        def changed(*_: Any) -> None:
            target = ref()
            if target is not None and self.enabled:
                self._pending = ref
                self._timer.start()

        layer.selected_data.events.items_changed.connect(changed)

    def flush(self) -> None:
        """Apply the latest pending selection now."""
        self._timer.stop()
        layer = self._pending() if self._pending is not None else None
        self._pending = None
        if layer is None or layer not in self.viewer.layers:
            return
        try:
            if plugin_meta(layer).get("kind") == REFERENCE_ROLE:
                self.link_from_reference(layer)
            else:
                self.link_from_spatial(layer)
        except Exception as exc:
            notify_error(exc)

    def _unit_matrix(self) -> Any:
        key = (id(self.model.result), id(self.model.reference))
        if self._units is None or self._units_key != key:
            self._units = unit_matrix(self.model.result, self.model.reference)
            self._units_key = key
        return self._units

    def reference_layer(self) -> Points | None:
        """The reference (UMAP) layer, found by its metadata (``kind == "reference"``)."""
        found = [
            layer for layer in find_layers(self.viewer, REFERENCE_ROLE) if isinstance(layer, Points)
        ]
        return found[-1] if found else None

    # ------------------------------------------------------------------ highlights
    def _highlight(
        self,
        name: str,
        data: np.ndarray,
        like: Layer | None,
        size: float | np.ndarray,
        features: pd.DataFrame,
    ) -> Points:
        existing = next(iter(self._highlights(name)), None)
        transform = {"scale": like.scale, "translate": like.translate} if like is not None else {}
        if isinstance(existing, Points):
            existing.data = data
            existing.features = features
            existing.size = size
            for attr, value in transform.items():
                setattr(existing, attr, value)
            return existing
        layer = Points(
            data,
            name=name,
            features=features,
            size=size,
            face_color="transparent",
            border_color=HIGHLIGHT_COLOR,
            border_width=0.25,
            border_width_is_relative=True,
            metadata=make_meta(HIGHLIGHT_ROLE, **{HIGHLIGHT_KEY: name}),
            **transform,
        )
        active = self.viewer.layers.selection.active
        self.viewer.layers.append(layer)
        if active is not None and active in self.viewer.layers:  # keep the user's layer active
            self.viewer.layers.selection.active = active
        return layer

    def _highlights(self, name: str) -> list[Points]:
        """The highlight layers of one direction, found by metadata (the user may rename them)."""
        return [
            lay
            for lay in self.viewer.layers
            if isinstance(lay, Points)
            and plugin_meta(lay).get("kind") == HIGHLIGHT_ROLE
            and plugin_meta(lay).get(HIGHLIGHT_KEY, lay.name) == name
        ]

    def _clear(self, name: str) -> None:
        for lay in self._highlights(name):
            if len(lay.data):
                lay.data = np.empty((0, lay.data.shape[1]))

    def link_from_spatial(self, layer: Points) -> pd.Series:
        """Highlight on the reference layer the reference cells that ``layer``'s selection maps to.

        Returns
        -------
        Mapped share per reference row (largest first; the first ``max_reference_cells`` are
        highlighted).
        """
        result, reference = self.model.result, self.model.reference
        ref_layer = self.reference_layer()
        if result is None or reference is None or ref_layer is None:
            return pd.Series(dtype=np.float64)
        self._clear(SPATIAL_HIGHLIGHT)  # one direction at a time
        rows = as_rows(layer, layer.selected_data)
        rows = rows[rows < result.n_obs]  # a plain spatial layer of other data: ignore extra rows
        weights = reference_weights(result, reference, rows, self._unit_matrix())
        top = weights.iloc[: self.max_reference_cells]
        points = _points_of_reference_rows(ref_layer, top.index.to_numpy(dtype=np.int64))
        shown = _reference_rows_of_points(ref_layer, points)
        share = top.reindex(shown).to_numpy(dtype=np.float32)
        base = float(np.mean(ref_layer.size)) if len(ref_layer.size) else 1.0
        # the ring grows with the mapped share, so the strongest partners stand out
        size = base * (1.5 + 2.0 * share / share.max()) if len(share) else base
        feats = pd.DataFrame(
            {"cell": np.asarray(reference.obs_names[shown], dtype=object), "mapped share": share}
        )
        self._highlight(
            REFERENCE_HIGHLIGHT, np.asarray(ref_layer.data)[points], ref_layer, size, feats
        )
        return weights

    def link_from_reference(self, layer: Points) -> str | None:
        """Show where the selected reference cells' cluster maps, and mark their spatial cells.

        Returns
        -------
        The cluster shown, or ``None``.
        """
        result, reference = self.model.result, self.model.reference
        if result is None or reference is None:
            return None
        self._clear(REFERENCE_HIGHLIGHT)
        idx = np.fromiter((int(i) for i in layer.selected_data), dtype=np.int64)
        ref_rows = _reference_rows_of_points(layer, idx)
        key = result_cluster_key(result) or self.model.cluster_key
        cluster = dominant_cluster(reference, key, ref_rows)
        if (
            cluster is not None
            and cluster in result.obsm.get("cluster_probabilities", pd.DataFrame()).columns
        ):
            old = [lay for lay in self._linked_cluster_layers if lay in self.viewer.layers]
            self._linked_cluster_layers = open_cluster(
                self.viewer,
                result,
                cluster,
                fov_key=self.model.fov_key,
                sample_key=self.model.sample_key,
                recolor_layers=old,
            )
        rows = np.asarray(
            spatial_rows_for_reference(result, reference, ref_rows, self._unit_matrix())
            if len(ref_rows)
            else [],
            dtype=np.int64,
        )
        explore = [lay for lay in self.viewer.layers if plugin_meta(lay).get("explore")]
        base = (
            float(np.mean(explore[0].size))
            if isinstance(explore[0] if explore else None, Points) and len(explore[0].size)
            else point_size(result)
        )
        feats = pd.DataFrame({"cell": np.asarray(result.obs_names[rows], dtype=object)})
        fov_key = resolve_fov_key(result, self.model.fov_key)
        samples = resolve_sample_key(result, self.model.sample_key, fov_key)
        # where the cells are drawn (samples side by side), so no transform of any one layer
        self._highlight(
            SPATIAL_HIGHLIGHT, display_yx(result, rows, samples), None, base * 1.8, feats
        )
        return cluster


#: The viewer's link controller (created and wired on first use, one per viewer behind napari's
#: proxies; see :func:`~napari_spatial_impute.plugin.model.per_viewer`).
get_link_controller = per_viewer(LinkController)
