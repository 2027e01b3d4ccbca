"""Colour a store's cells in their own shapes by what the Explore widget shows.

One :class:`CellPainter` per viewer listens to the model's ``shown_changed``
(:class:`~napari_spatial_impute.plugin.model.ShownValues`: one value and one RGBA per result row).
When the result was read from a SpatialData store, it finds that store's labels layers in the
viewer by their metadata (never by name), and colours the cells:

* **labels**: a *cell labels* layer over the same pixels, just below the store's outlined labels
  (per-FOV tiles read with unique ids, :func:`~napari_spatial_impute.viz.cell_shapes.cell_labels_data`),
  drawn transparent: its ``features`` give the same hover readout as a point (value, cell, FOV,
  most likely clusters). The colours are an *Image* layer just below it whose data is a lazy
  view of the same label pixels through a lookup from label key to value
  (:class:`~napari_spatial_impute.viz.cell_shapes.LookupArray`), drawn with a step colormap that
  gives each cell exactly its row's colour
  (:func:`~napari_spatial_impute.viz.cell_shapes.value_colours`). A gene switch swaps the lookup
  and refreshes the layer: its cost follows the pixels in view (the label pixels read for the
  view are kept), not the number of cells (a ``DirectLabelColormap`` of 10^5 cells took seconds
  of per-label Python work);
* **shapes** (polygons, circles): a Shapes (or Points) layer of the cells' own shapes coloured by
  ``face_color``.

The lookup, the colormap and the hover table are built in a worker; the main thread only adds
a layer or runs the setters (the lookup swap and ``refresh``, ``layer.colormap = ...``,
``layer.features = ...``, ``layer.face_color = ...``). A newer value
shown while a worker runs wins: the older one's colours are dropped. The points stay the
fallback where the data have no shapes and what a zoomed-out view draws; once a cell spans
:data:`~napari_spatial_impute.viz.cell_shapes.MASKS_FROM_PX` screen pixels the cells' points are
hidden so the coloured masks show (shown again when zoomed out; never one the user hid).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.utils.notifications import show_info

from napari_spatial_impute.plugin.model import ShownValues, get_model, per_viewer
from napari_spatial_impute.viz.cell_shapes import (
    CELL_KINDS,
    CELL_LABELS_KIND,
    CELL_OPACITY,
    CELL_SHAPES_KIND,
    CELL_VALUES_KIND,
    HIDDEN_FOR_MASKS,
    CellIds,
    CellShapes,
    KeyLookup,
    LookupArray,
    ValueColours,
    cell_ids,
    cell_labels_layer,
    cell_spacing,
    key_lookup,
    label_keys,
    masks_readable,
    same_store,
    shape_colours,
    shape_layer,
    shown_features,
    value_colours,
)
from napari_spatial_impute.viz.layers import META_KEY, plugin_meta, set_meta
from napari_spatial_impute.viz.rasters import LABELS_KIND, RASTER_KINDS


@dataclass
class _LabelsJob:
    """One labels layer to colour: its data and metadata (read on the main thread)."""

    layer_id: int
    data: Any
    elements: list[str]
    offsets: list[int] | None


@dataclass
class _Painted:
    """What one cell labels layer gets: the values image's lookup and colormap, the hover table."""

    layer_id: int
    lookup: KeyLookup
    colours: ValueColours
    colormap: Any
    features: Any


@dataclass
class _Prepared:
    """What the main thread sets: per labels layer its values and features; shapes colours."""

    generation: int
    labels: list[_Painted] = field(default_factory=list)
    shapes: CellShapes | None = None
    shape_faces: np.ndarray | None = None
    note: str | None = None


class CellPainter:
    """Colours the cells of a viewer's store layers whenever the model's shown values change.

    Attributes
    ----------
    worker
        The last worker started (tests wait on its ``finished``), or ``None``.
    applied
        How many shown values were applied to the layers (stale ones are not counted).
    note
        Why the cells of shapes elements stay points, if they do.
    """

    def __init__(self, viewer: Any) -> None:
        self._viewer = weakref.ref(viewer)
        self.model = get_model(viewer)
        self.worker: Any = None
        #: The thread compiling napari's label lookups (started when a store's labels open).
        self.warm_thread: threading.Thread | None = None
        self.applied = 0
        self.note: str | None = None
        self._generation = 0
        self._keys: dict[tuple[int, int], np.ndarray] = {}  # (result id, layer id) -> keys
        self._shapes: dict[int, CellShapes | str] = {}  # result id -> shapes or why not
        self._result: Any = _none
        self.model.shown_changed.connect(self.on_shown)
        viewer.layers.events.inserted.connect(self._on_inserted)
        self._spacing: tuple[int, float] = (0, float("nan"))  # (result id, cell size)
        _camera(viewer).events.zoom.connect(self.points_or_masks)
        viewer.grid.events.enabled.connect(self.points_or_masks)

    def _on_inserted(self, event: Any) -> None:
        """A store's labels layer came in: compile napari's label lookups in a worker now, so
        the first gene shown over its cells does not wait for the compiler (once a process)."""
        global _WARMED
        if _WARMED or plugin_meta(event.value).get("kind") != LABELS_KIND:
            return
        _WARMED = True
        # a plain daemon thread: nothing comes back to the GUI, and a Qt worker outliving a
        # closed viewer printed "WorkerBaseSignals has been deleted" when it finished
        self.warm_thread = threading.Thread(
            target=_warm_up, name="napari-spatial-impute label lookups", daemon=True
        )
        self.warm_thread.start()

    # ------------------------------------------------------------------ main thread
    def on_shown(self, shown: ShownValues | None) -> None:
        """Start colouring the store's cells by ``shown`` (``None``: hide the coloured cells)."""
        self._generation += 1
        viewer = self._viewer()
        result = self.model.result
        if self._result() is not result:  # keys and shapes belong to one result
            self._keys, self._shapes = {}, {}
            self._result = weakref.ref(result) if result is not None else _none
        ids = cell_ids(result)
        if viewer is None:
            return
        if shown is None or ids is None or result is None or len(shown.rgba) != result.n_obs:
            self._hide(viewer)
            return
        jobs = [self._labels_job(viewer, source, ids) for source in self._sources(viewer, ids)]
        covered = {e for job in jobs for e in job.elements}
        rest = sorted(set(ids.regions) - covered)
        self._start(result, ids, shown, jobs, rest)

    def _sources(self, viewer: Any, ids: CellIds) -> list[Any]:
        """The store's labels layers holding cells of the result."""
        wanted = set(ids.regions)
        return [
            layer
            for layer in viewer.layers
            if _of_store(layer, ids, LABELS_KIND)
            and wanted.intersection(plugin_meta(layer).get("elements", []))
        ]

    def _labels_job(self, viewer: Any, source: Any, ids: CellIds) -> _LabelsJob:
        """The cell labels layer of ``source`` (added below it the first time)."""
        meta = plugin_meta(source)
        elements = [str(e) for e in meta.get("elements", [])]
        target = next(
            (
                layer
                for layer in viewer.layers
                if _of_store(layer, ids, CELL_LABELS_KIND)
                and plugin_meta(layer).get("elements") == elements
            ),
            None,
        )
        if target is None:
            data, kwargs, _ = cell_labels_layer(source.data, meta, f"cells · {source.name}")
            target = viewer.add_labels(
                data,
                affine=source.affine.affine_matrix,
                scale=source.scale,
                translate=source.translate,
                multiscale=source.multiscale,
                **kwargs,
            )
            viewer.layers.move(viewer.layers.index(target), viewer.layers.index(source))
            target.colormap = _clear_colormap()  # the values image below draws the colours
        if not target.visible:  # (setting it again refreshes the layer)
            target.visible = True
        return _LabelsJob(id(target), target.data, elements, plugin_meta(target).get("id_offsets"))

    def _start(
        self, result: Any, ids: CellIds, shown: ShownValues, jobs: list[_LabelsJob], rest: list[str]
    ) -> None:
        from napari.qt.threading import create_worker

        generation = self._generation
        fov_key, sample_key = self.model.fov_key, self.model.sample_key
        keys_cache, shapes_cache = self._keys, self._shapes

        def work() -> _Prepared:
            out = _Prepared(generation)
            for job in jobs:
                key = (id(result), job.layer_id)
                if key not in keys_cache:
                    keys_cache[key] = label_keys(ids, job.elements, job.offsets)
                keys = keys_cache[key]
                colours = value_colours(shown.values, shown.rgba)
                lookup = key_lookup(keys, colours.values)
                feats = shown_features(
                    result,
                    keys,
                    shown.kind,
                    shown.name,
                    shown.values,
                    shown.categories,
                    fov_key=fov_key,
                    sample_key=sample_key,
                    instance=(ids.instance_key, ids.instances),
                )
                _prefetch(job.data)
                cmap = _step_colormap(colours)
                out.labels.append(_Painted(job.layer_id, lookup, colours, cmap, feats))
            if rest:
                shapes = shapes_cache.get(id(result))
                if shapes is None:
                    shapes = _read_shapes(ids, rest)
                    shapes_cache[id(result)] = shapes
                if isinstance(shapes, CellShapes):
                    out.shapes = shapes
                    out.shape_faces = shape_colours(shapes.rows, shown.rgba)
                else:
                    out.note = shapes
            return out

        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(self._apply)
        self.worker = worker
        worker.start()

    def _apply(self, prepared: _Prepared) -> None:
        """Main thread: the setters (or one layer added), nothing computed."""
        viewer = self._viewer()
        if viewer is None or prepared.generation != self._generation:
            return
        by_id = {id(layer): layer for layer in viewer.layers}
        for painted in prepared.labels:
            layer = by_id.get(painted.layer_id)
            if layer is not None:
                self._paint_values(viewer, layer, painted)
                layer.features = painted.features
        if prepared.note and prepared.note != self.note:  # said once, not at every gene
            show_info(prepared.note)
        self.note = prepared.note
        if prepared.shapes is not None and prepared.shape_faces is not None:
            layer = self._shapes_layer(viewer, prepared.shapes)
            layer.face_color = prepared.shape_faces
            layer.visible = True
        self.applied += 1
        self.points_or_masks()

    def points_or_masks(self, event: Any = None) -> None:
        """Zoomed in so far that cells are readable masks: hide the cells' points over them;
        zoomed out: show again the points hidden here (never one the user hid)."""
        viewer = self._viewer()
        if viewer is None:
            return
        coloured = any(
            layer.visible and plugin_meta(layer).get("kind") in CELL_KINDS
            for layer in viewer.layers
        )
        result = self.model.result
        if coloured and result is not None and self._spacing[0] != id(result):
            self._spacing = (id(result), cell_spacing(result.obsm["spatial"]))
        # side by side, napari's grid gives the masks a cell of their own: the points stay
        masks = (
            coloured
            and not viewer.grid.enabled
            and masks_readable(self._spacing[1], float(_camera(viewer).zoom))
        )
        for layer in viewer.layers:
            if type(layer).__name__ != "Points" or not _cell_points(layer):
                continue
            if masks and layer.visible:  # the flag: hidden here (and still what is shown)
                set_meta(layer, **{HIDDEN_FOR_MASKS: True})
                layer.visible = False
            elif not masks and plugin_meta(layer).get(HIDDEN_FOR_MASKS):
                set_meta(layer, **{HIDDEN_FOR_MASKS: None})
                layer.visible = True

    def _paint_values(self, viewer: Any, labels: Any, painted: _Painted) -> None:
        """The values image of a cell labels layer: added just below it the first time (the
        labels layer, with the hover table, stays the active one); later the lookup of each
        level is swapped and the layer refreshed once."""
        image = self._values_layer(viewer, labels)
        limits = painted.colours.limits
        if image is None:
            levels = labels.data if labels.multiscale else [labels.data]
            views = [LookupArray(level, painted.lookup) for level in levels]
            meta = {**plugin_meta(labels), "kind": CELL_VALUES_KIND, "labels_layer": labels.name}
            image = viewer.add_image(
                views if labels.multiscale else views[0],
                name=labels.name.replace("cells ·", "cells values ·", 1),
                multiscale=labels.multiscale,
                affine=labels.affine.affine_matrix,
                scale=labels.scale,
                translate=labels.translate,
                colormap=painted.colormap,
                contrast_limits=limits,
                opacity=CELL_OPACITY,
                blending="translucent",
                interpolation2d="nearest",
                metadata={META_KEY: meta},
            )
            viewer.layers.move(viewer.layers.index(image), viewer.layers.index(labels))
            viewer.layers.selection.active = labels
            return
        if not image.visible:
            image.visible = True
        for view in image.data if image.multiscale else [image.data]:
            view.lookup = painted.lookup
        image.colormap = painted.colormap
        image.contrast_limits = limits
        image.refresh()

    def _values_layer(self, viewer: Any, labels: Any) -> Any:
        """The values image over the same elements of the same store as ``labels``, if any
        (found by its metadata: a cell labels layer added again reuses it)."""
        meta = plugin_meta(labels)
        for layer in viewer.layers:
            m = plugin_meta(layer)
            if m.get("kind") == CELL_VALUES_KIND and m.get("elements") == meta.get("elements"):
                if m.get("coordinate_system") == meta.get("coordinate_system") and same_store(
                    m.get("store"), meta.get("store")
                ):
                    return layer
        return None

    def _shapes_layer(self, viewer: Any, shapes: CellShapes) -> Any:
        """The viewer's layer of these shapes, added above the store's rasters the first time."""
        from napari.layers import Layer

        data, kwargs, kind = shapes.layer
        meta = plugin_meta(kwargs["metadata"])
        for layer in viewer.layers:
            m = plugin_meta(layer)
            if m.get("kind") == CELL_SHAPES_KIND and m.get("elements") == meta["elements"]:
                if same_store(m.get("store"), meta["store"]):
                    return layer
        layer = Layer.create(data, dict(kwargs), kind)
        rasters = [
            i for i, lay in enumerate(viewer.layers) if plugin_meta(lay).get("kind") in RASTER_KINDS
        ]
        viewer.layers.insert(max(rasters) + 1 if rasters else 0, layer)
        return layer

    def _hide(self, viewer: Any) -> None:
        for layer in viewer.layers:
            if plugin_meta(layer).get("kind") in CELL_KINDS:
                layer.visible = False
        self.points_or_masks()


_WARMED = False


def _camera(viewer: Any) -> Any:
    """``viewer.scene.camera`` (napari >= 0.9), else ``viewer.camera``."""
    return getattr(getattr(viewer, "scene", None), "camera", None) or viewer.camera


def _cell_points(layer: Any) -> bool:
    """Whether a Points layer draws the cells (an exploration layer or a data set's cells)."""
    meta = plugin_meta(layer)
    return bool(meta.get("explore")) or meta.get("role") in ("spatial", "result")


def _warm_up() -> None:
    """Map a label of each wide dtype through a direct colormap once (numba compiles napari's
    value-to-texture lookups on first use, seconds; the cell labels layer draws through one)."""
    for dtype in (np.int64, np.uint32, np.int32):
        _clear_colormap().map(np.zeros(1, dtype=dtype))


def _none() -> None:
    return None


def _of_store(layer: Any, ids: CellIds, kind: str) -> bool:
    meta = plugin_meta(layer)
    return (
        meta.get("kind") == kind
        and meta.get("coordinate_system") == ids.coordinate_system
        and same_store(meta.get("store"), ids.store)
    )


def _clear_colormap() -> Any:
    """A direct label colormap drawing every label transparent (the cell labels layer carries
    the hover table; the values image below it draws the colours)."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: np.zeros(4, dtype=np.float32)})


def _step_colormap(colours: ValueColours) -> Any:
    """napari's step colormap of :func:`~napari_spatial_impute.viz.cell_shapes.value_colours`
    (NaN transparent: background and cells of no row)."""
    from napari.utils.colormaps import Colormap

    return Colormap(
        colors=colours.colors,
        controls=colours.controls,
        interpolation="zero",
        name=f"cell values {id(colours):x}",
    )


def _prefetch(data: Any) -> None:
    """Read the coarsest level of a multiscale layer here (napari reads it whole for the
    thumbnail when the layer is drawn; a mosaic caches it)."""
    if isinstance(data, list) and data:
        np.asarray(data[-1][...])


def _read_shapes(ids: CellIds, elements: list[str]) -> CellShapes | str:
    """The shapes of the result's cells in ``elements`` (those that are shapes elements)."""
    from napari_spatial_impute.io.sdata import open_store

    sdata = open_store(ids.store)
    names = [e for e in elements if e in sdata.shapes]
    if not names:
        return "the cells' elements are not in the viewer; they are drawn as points"
    return shape_layer(sdata, ids, names, "cells · " + ", ".join(names))


_painter_of = per_viewer(CellPainter)


def connect_cell_painter(viewer: Any) -> CellPainter:
    """The viewer's :class:`CellPainter`, listening from now on (one per viewer)."""
    return _painter_of(viewer)
