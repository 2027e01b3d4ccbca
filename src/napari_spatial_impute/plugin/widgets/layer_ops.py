"""Adding, finding and recolouring the exploration layers of a viewer (shared by the widgets).

One layer per role (imputed, measured, interval width, probability, most likely cluster) holds
every sample; showing another gene recolours it in place (:func:`recolor_values`: the value's
feature columns, then one ``face_color`` setter with colours prepared off the main thread).

Only public napari API: ``napari.layers.Points``, ``viewer.layers``, ``layer.metadata``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from napari.layers import Layer, Points
from napari.utils.notifications import show_error

from napari_spatial_impute._errors import first_line
from napari_spatial_impute.io.schema import interval_levels
from napari_spatial_impute.viz.explore import (
    predicted_layer_specs,
    shared_genes,
    value_layer_specs,
)
from napari_spatial_impute.viz.intervals import INTERVAL_ROLE, interval_layer_specs
from napari_spatial_impute.viz.layers import (
    META_KEY,
    PREDICTED_ROLE,
    REFERENCE_ROLE,
    PointsSpec,
    plugin_meta,
    set_meta,
    source_adata,
)
from napari_spatial_impute.viz.rasters import LABELS_KIND
from napari_spatial_impute.viz.sections import (
    camera_for_box,
    fov_bounds,
    resolve_fov_key,
    resolve_sample_key,
    section_bounds,
)


def find_layers(
    viewer: Any, role: str | None = None, sample: str | None = None, value: str | None = None
) -> list[Layer]:
    """Layers whose metadata match the given role, sample and value (``None`` matches anything)."""
    out = []
    for layer in viewer.layers:
        md = plugin_meta(layer)
        if role is not None and md.get("kind") != role:
            continue
        if sample is not None and str(md.get("sample")) != str(sample):
            continue
        if value is not None and md.get("value") != value:
            continue
        out.append(layer)
    return out


def layer_identity(metadata: Any) -> tuple[Any, ...] | None:
    """What an exploration layer shows, from its metadata: ``(role, value, sample, level)``.

    ``None`` for any other layer. Layers are matched by this, never by name: napari renames a
    layer whose name is taken (``"... [1]"``) and the user may rename any layer.
    """
    md = plugin_meta(metadata)
    if not md.get("explore"):
        return None
    return (md.get("kind"), str(md.get("value")), str(md.get("sample")), md.get("level"))


def recolor_values(layer: Points, spec: PointsSpec) -> None:
    """Give a value layer (imputed, measured, probability, interval) the values and colours of
    ``spec`` in place: its value columns replaced in the layer's feature table (the hover text;
    no full features reset), then one ``face_color`` setter with the prepared RGBA array.

    The layer keeps its other feature columns (cell, FOV, sample, top clusters: the same
    cells); columns of the old value (and of a mask, listed in the metadata's ``columns``) go.
    """
    md = plugin_meta(layer)
    rows = md.get("rows")
    if len(layer.data) != len(spec.data) or (
        rows is not None and not np.array_equal(rows, spec.meta["rows"])
    ):
        raise ValueError(
            f"layer {layer.name!r} shows other cells than the new values; it is rebuilt instead."
        )
    own = list(spec.meta.get("columns", [spec.meta.get("value")]))
    feats = layer.features  # napari's own table: edited in place, read by the hover text
    stale = [c for c in md.get("columns", []) if c in feats.columns and c not in own]
    if stale:
        feats.drop(columns=stale, inplace=True)
    for i, col in enumerate(own):
        vals = spec.features[col].to_numpy()
        if col in feats.columns:
            feats[col] = vals
        else:
            feats.insert(min(i, len(feats.columns)), col, vals)
    set_face_colors(layer, spec.kwargs["face_color"])
    layer.metadata = {**layer.metadata, META_KEY: dict(spec.meta)}
    if layer.name != spec.name:
        layer.name = spec.name
    if not np.all(layer.shown):  # a mask hid cells of the old values
        layer.shown = np.ones(len(layer.data), dtype=bool)


def set_face_colors(layer: Points, rgba: np.ndarray) -> None:
    """``layer.face_color = rgba``, the one colour setter, drawn once: napari's setter has the
    canvas take every point again twice (when the colours change, then on its ``face_color``
    event, to which only the canvas listens); the second is blocked."""
    with layer.events.face_color.blocker():
        layer.face_color = rgba


def _replace_layer(viewer: Any, old: Layer, new: Layer) -> None:
    """``new`` where ``old`` was in the layer list (``old`` removed)."""
    index = list(viewer.layers).index(old)
    viewer.layers.insert(index, new)
    viewer.layers.remove(old)


def apply_specs(
    viewer: Any, specs: Sequence[PointsSpec], replace: Sequence[Layer | None] | None = None
) -> list[Points]:
    """Add the layers of ``specs`` (or recolour the matching ``replace`` layers), all or nothing.

    A layer already showing what a spec shows (same :func:`layer_identity`) is recoloured
    instead of duplicated; a layer of other cells (another result's samples) is rebuilt in its
    place. New layers are all built before any is added; if adding fails, the ones already
    added are removed again.
    """
    replace = list(replace) if replace is not None else [None] * len(specs)
    shown = {
        key: layer for layer in viewer.layers if (key := layer_identity(layer.metadata)) is not None
    }
    targets: list[Points | None] = []
    for spec, old in zip(specs, replace, strict=True):
        ident = layer_identity(spec.kwargs["metadata"])
        same = shown.get(ident) if ident is not None else None
        target = same if isinstance(same, Points) else old
        if target is not None and not _recolorable(target, spec):
            target = None
        targets.append(target)
    new_layers = {
        i: Points(s.data, **s.add_kwargs())
        for i, (s, t) in enumerate(zip(specs, targets, strict=True))
        if t is None
    }
    added: list[Points] = []
    try:
        for i, layer in new_layers.items():
            old = replace[i]
            if old is not None and old in viewer.layers and old not in targets:
                _replace_layer(viewer, old, layer)  # other cells: rebuilt where it was
            else:
                viewer.layers.append(layer)
            added.append(layer)
    except Exception:
        for layer in added:
            if layer in viewer.layers:
                viewer.layers.remove(layer)
        raise
    out = []
    for i, (spec, target) in enumerate(zip(specs, targets, strict=True)):
        if target is None:
            out.append(new_layers[i])
        else:
            recolor_values(target, spec)
            out.append(target)
    return out


def _recolorable(layer: Layer, spec: PointsSpec) -> bool:
    """Whether ``layer`` can take ``spec``'s colours in place: the same cells, direct colours."""
    rows = plugin_meta(layer).get("rows")
    return (
        isinstance(layer, Points)
        and "face_color" in spec.kwargs
        and len(layer.data) == len(spec.data)
        and (rows is None or np.array_equal(rows, spec.meta["rows"]))
    )


def gene_specs(
    result: Any,
    gene: str,
    *,
    fov_key: str | None = None,
    sample_key: str | None = None,
    measured: bool = True,
    size: float | None = None,
    interval: str | None = None,
) -> tuple[list[PointsSpec], list[PointsSpec], list[PointsSpec] | None]:
    """Layer data of one gene, one layer per role for all samples (no viewer; safe in a worker thread).

    Returns
    -------
    The imputed specs; the measured specs (empty for a gene that was not measured in space, or
    without ``measured``); the interval-width specs at level ``interval`` (``"90"``, ``"67"``),
    empty when the result has no intervals, ``None`` when ``interval`` is ``None`` (then the
    interval layers already shown are left alone).
    """
    keys: dict[str, Any] = {"fov_key": fov_key, "sample_key": sample_key, "size": size}
    specs = value_layer_specs(result, "imputed", gene, **keys)
    gene = specs[0].meta["value"] if specs else gene
    m_specs: list[PointsSpec] = []
    if measured and gene in shared_genes(result):
        m_specs = value_layer_specs(result, "measured", gene, **keys)
    i_specs: list[PointsSpec] | None = None
    if interval is not None:
        i_specs = []
        if str(interval) in interval_levels(result):
            i_specs = interval_layer_specs(result, gene, interval, **keys)
    return specs, m_specs, i_specs


def place_gene(
    viewer: Any,
    specs: Sequence[PointsSpec],
    m_specs: Sequence[PointsSpec],
    recolor_layers: Sequence[Layer] = (),
    i_specs: Sequence[PointsSpec] | None = None,
) -> list[Points]:
    """Add or recolour a gene's layers (see :func:`open_gene`); main thread only.

    The measured (and, when ``i_specs`` is not ``None``, interval-width) layers of the
    recoloured layer's old gene are recoloured too, or removed when the new gene has none.
    """
    old = next(iter(recolor_layers), None)
    old_value = plugin_meta(old).get("value") if old is not None else None
    all_specs: list[PointsSpec] = list(specs)
    all_replace: list[Layer | None] = [old] + [None] * (len(specs) - 1)
    stale: list[Layer] = []
    companions: list[tuple[str, Sequence[PointsSpec]]] = [("measured", m_specs)]
    if i_specs is not None:
        companions.append((INTERVAL_ROLE, i_specs))
    for role, comp in companions:
        olds = find_layers(viewer, role, value=old_value) if old_value is not None else []
        for i, spec in enumerate(comp):
            all_specs.append(spec)
            all_replace.append(olds[i] if i < len(olds) else None)
        stale += olds[len(comp) :]
    layers = apply_specs(viewer, all_specs, all_replace)
    for layer in stale:
        if layer in viewer.layers and layer not in layers:
            viewer.layers.remove(layer)
    return layers


def open_gene(
    viewer: Any,
    result: Any,
    gene: str,
    *,
    fov_key: str | None = None,
    sample_key: str | None = None,
    measured: bool = True,
    recolor_layers: Sequence[Layer] = (),
    size: float | None = None,
    interval: str | None = None,
) -> list[Points]:
    """Show one gene: its imputed layer and, for shared genes, the measured one.

    ``recolor_layers`` are existing imputed layers (any gene) to recolour instead of adding new
    ones, matched by sample; measured layers of those layers' old gene are recoloured too, or
    removed when the new gene was not measured. With ``interval`` (a level such as ``"90"``) the
    interval-width layers are shown (and recoloured) the same way.
    """
    specs, m_specs, i_specs = gene_specs(
        result,
        gene,
        fov_key=fov_key,
        sample_key=sample_key,
        measured=measured,
        size=size,
        interval=interval,
    )
    return place_gene(viewer, specs, m_specs, recolor_layers, i_specs)


def place_cluster(
    viewer: Any, specs: Sequence[PointsSpec], recolor_layers: Sequence[Layer] = ()
) -> list[Points]:
    """Add or recolour the probability layer (recolouring the first of ``recolor_layers``);
    main thread only."""
    old = list(recolor_layers)[: len(specs)]
    return apply_specs(viewer, specs, old + [None] * (len(specs) - len(old)))


def open_cluster(
    viewer: Any,
    result: Any,
    cluster: str,
    *,
    fov_key: str | None = None,
    sample_key: str | None = None,
    recolor_layers: Sequence[Layer] = (),
    size: float | None = None,
) -> list[Points]:
    """Show one cluster's probability (recolouring ``recolor_layers``)."""
    specs = value_layer_specs(
        result, "probability", cluster, fov_key=fov_key, sample_key=sample_key, size=size
    )
    return place_cluster(viewer, specs, recolor_layers)


def place_predicted(viewer: Any, specs: Sequence[PointsSpec], result: Any = None) -> list[Points]:
    """Add most-likely-cluster layers, rebuilding those of the same samples; main thread only.

    Rebuilt are the exploration layers of the same sample and cluster key and, when ``result``
    is given, the result's own most-likely layers (the Map widget's or the reader's), matched by
    metadata. Categorical colouring cannot be switched in place, hence the rebuilding.
    """
    wanted = {(s.meta.get("value"), str(s.meta.get("sample"))) for s in specs}
    old = []
    for layer in viewer.layers:
        md = plugin_meta(layer)
        if md.get("kind") != PREDICTED_ROLE:
            continue
        if (md.get("value"), str(md.get("sample"))) not in wanted:
            continue
        if md.get("explore") or (result is not None and source_adata(layer) is result):
            old.append(layer)
    for layer in old:
        viewer.layers.remove(layer)
    return apply_specs(viewer, specs)


def open_predicted(
    viewer: Any,
    result: Any,
    *,
    fov_key: str | None = None,
    sample_key: str | None = None,
    size: float | None = None,
) -> list[Points]:
    """Show the most likely cluster (categorical colours)."""
    specs = predicted_layer_specs(result, fov_key=fov_key, sample_key=sample_key, size=size)
    return place_predicted(viewer, specs, result)


def _fresh_spec(
    result: Any, md: dict, fov_key: str | None, sample_key: str | None, size: float
) -> PointsSpec:
    """The spec of an exploration layer (known by its metadata) built from ``result``."""
    role = md.get("kind")
    keys: dict[str, Any] = {
        "fov_key": fov_key,
        "sample_key": sample_key,
        "samples": [md["sample"]] if md.get("sample") else None,
        "size": size,
    }
    if role == PREDICTED_ROLE:
        return predicted_layer_specs(result, **keys)[0]
    if role == INTERVAL_ROLE:
        return interval_layer_specs(result, md["value"], md.get("level", "90"), **keys)[0]
    # str(): a layer without a kind fails in values() (InputError) as before
    return value_layer_specs(result, str(role), md["value"], **keys)[0]


#: ``kind`` of an exploration layer kept, unchanged, from a previous result.
PREVIOUS_ROLE = "previous result"
#: Suffix of the name of such a layer.
PREVIOUS_SUFFIX = " (previous result)"


def detach_layer(layer: Layer) -> None:
    """Keep ``layer`` as it is, but no longer as a layer of the current result.

    Its exploration entries go (it is not recoloured, linked or hovered with the new result's
    rows any more), what it showed stays in the metadata dict's ``previous`` and its name says so.
    """
    md = dict(plugin_meta(layer))
    shown = {k: md.pop(k, None) for k in ("kind", "value", "sample", "level")}
    for key in ("explore", "rows"):
        md.pop(key, None)
    md["kind"] = PREVIOUS_ROLE
    md["previous"] = shown
    layer.metadata = {**layer.metadata, META_KEY: md}
    if not layer.name.endswith(PREVIOUS_SUFFIX):
        layer.name = f"{layer.name}{PREVIOUS_SUFFIX}"


def refresh_layers(
    viewer: Any, result: Any, fov_key: str | None = None, sample_key: str | None = None
) -> tuple[list[Points], list[Points]]:
    """Give the exploration layers the values of a new result (same genes, clusters, samples).

    Layers whose gene, cluster, interval level or sample the new result lacks, or whose sample
    changed size, are kept unchanged with the previous result's values, detached from the exploration
    (:func:`detach_layer`): nothing the user opened disappears. ``result=None`` (the result was
    cleared) removes them all.

    Returns
    -------
    The layers that now show the new result, and those kept from the previous one.
    """
    ours = [
        lay for lay in viewer.layers if plugin_meta(lay).get("explore") and isinstance(lay, Points)
    ]
    kept: list[Points] = []
    detached: list[Points] = []
    for layer in ours:
        md = plugin_meta(layer)
        if result is None:
            viewer.layers.remove(layer)
            continue
        try:
            spec = _fresh_spec(result, md, fov_key, sample_key, float(np.mean(layer.size)))
            if len(spec.data) != len(layer.data):
                raise ValueError("sample changed")
        except Exception:
            detach_layer(layer)
            detached.append(layer)
            continue
        if not np.array_equal(layer.data, spec.data):
            layer.data = spec.data
        if md.get("kind") == PREDICTED_ROLE:  # categorical: same colour column, new values
            layer.features = spec.features
            layer.metadata = {**layer.metadata, META_KEY: dict(spec.meta)}
        else:
            md["rows"] = spec.meta["rows"]  # the same number of cells: recoloured in place
            recolor_values(layer, spec)
        kept.append(layer)
    return kept, detached


def jump_to_fov(
    viewer: Any, result: Any, fov: str, fov_key: str | None = None, sample_key: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Center the camera on one FOV where it is drawn and zoom to its bounds.

    Returns the FOV's ``(center, size)`` in world ``(y, x)``.
    """
    fov_key = resolve_fov_key(result, fov_key)
    sample_key = resolve_sample_key(result, sample_key, fov_key)
    center, size = fov_bounds(result, fov_key, fov, sample_key)
    zoom_to_box(viewer, center, size)
    return center, size


def zoom_to_section(
    viewer: Any, result: Any, fov_key: str | None = None, sample_key: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Center the camera on the whole section (every sample where it is drawn) and fit it;
    unlike napari's reset_view, layers of other data (a reference UMAP beside) do not count."""
    fov_key = resolve_fov_key(result, fov_key)
    center, size = section_bounds(result, resolve_sample_key(result, sample_key, fov_key))
    zoom_to_box(viewer, center, size)
    return center, size


def zoom_to_box(viewer: Any, center: np.ndarray, size: np.ndarray) -> None:
    """Camera centred on a ``(y, x)`` box and zoomed to fit it (one grid cell when side by side)."""
    camera = getattr(getattr(viewer, "scene", None), "camera", None) or viewer.camera
    camera.center = (float(center[0]), float(center[1]))
    canvas = np.asarray(getattr(getattr(viewer, "canvas", None), "size", None) or (600, 800))
    grid = getattr(viewer, "grid", None)
    if grid is not None and grid.enabled:  # side by side: the FOV fills one grid cell
        try:
            shape = grid.actual_shape(list(viewer.layers))  # napari 0.7+: the layers
        except TypeError:
            shape = grid.actual_shape(len(viewer.layers))  # earlier: their number
        canvas = canvas / np.maximum(np.asarray(shape), 1)
    camera.zoom = camera_for_box(center, size, (int(canvas[0]), int(canvas[1])))


def notify_error(exc: BaseException) -> None:
    """Show an exception as a napari error notification with its first line only."""
    msg = first_line(exc)
    show_error(msg)


def as_rows(layer: Layer, indices: Iterable[int]) -> np.ndarray:
    """Result rows of the given point indices of an exploration layer."""
    rows = plugin_meta(layer).get("rows")
    idx = np.fromiter((int(i) for i in indices), dtype=np.int64)
    if rows is None:
        return idx
    return np.asarray(rows, dtype=np.int64)[idx]


#: Roles placed side by side (grid cells from the top left), in this order.
SIDE_BY_SIDE_ROLES: tuple[str, ...] = (
    "imputed",
    "measured",
    INTERVAL_ROLE,
    "probability",
    PREDICTED_ROLE,
)


#: Metadata kind of the layer of FOV and sample outlines.
OUTLINES_KIND = "fov_outlines"
#: Metadata entry of an outline layer hidden while the side-by-side grid is on.
HIDDEN_BY_GRID = "hidden_by_grid"


def hide_data_layers(viewer: Any, *datasets: Any) -> list[Layer]:
    """Hide the layers of whole data sets (the spatial data, a result's most likely cluster)
    drawn under the exploration layers: the same cells drawn again, under them, would cost a
    full draw each (seconds at 10^6 cells) and show nothing. Returns the layers hidden; the
    user can show them again from the layer list."""
    hidden = []
    for layer in viewer.layers:
        md = plugin_meta(layer)
        if md.get("explore") or not layer.visible:
            continue
        if any(source_adata(layer) is d for d in datasets if d is not None):
            layer.visible = False
            hidden.append(layer)
    return hidden


def arrange_side_by_side(viewer: Any, on: bool = True) -> list[list[Layer]]:
    """Measured beside imputed (and interval width, probability, most likely cluster): one
    grid cell per role with linked cameras, each cell holding that role's layer of every sample.

    napari's grid fills cells from the top of the layer list in groups of ``|stride|`` layers;
    the exploration layers are moved to the top, role by role, and the stride is the number of
    samples, so every cell shows one role of the whole section(s). Other layers (a store's
    image) fill the cells after them, the image beside the values with the same camera; the FOV
    outline layer and a store's cell outlines (labels) are hidden while the grid is on (they
    would outline an empty cell), and so is the reference UMAP (its cell, with the camera fitted
    to the tissue, would show nothing and shrink the others). ``on=False`` turns the grid off
    and shows them again.

    Returns the role groups placed (top-left cell first).
    """
    outlines = [
        lay
        for lay in viewer.layers
        if plugin_meta(lay).get("kind") in (OUTLINES_KIND, LABELS_KIND, REFERENCE_ROLE)
    ]
    if not on:
        viewer.grid.enabled = False
        for layer in outlines:  # shown again where the grid had hidden them
            if plugin_meta(layer).get(HIDDEN_BY_GRID):
                set_meta(layer, **{HIDDEN_BY_GRID: None})
                layer.visible = True
        return []
    for layer in outlines:  # they would take a grid cell of their own, outlining nothing
        if layer.visible:
            set_meta(layer, **{HIDDEN_BY_GRID: True})
            layer.visible = False
    groups: list[list[Layer]] = []
    for role in SIDE_BY_SIDE_ROLES:
        group = [
            lay
            for lay in viewer.layers
            if plugin_meta(lay).get("kind") == role and plugin_meta(lay).get("explore")
        ]
        if group:
            groups.append(group)
    size = max((len(g) for g in groups), default=1)
    if any(len(g) != size for g in groups):  # e.g. a role shown for some samples only
        size = 1
    # the list's top is the first cell: the first role's layers on top, then the next role's...
    wanted = [layer for group in groups for layer in reversed(group)]
    current = list(viewer.layers)
    tail = current[len(current) - len(wanted) :] if wanted else []
    groups_in_place = [
        {id(lay) for lay in tail[::-1][i * size : (i + 1) * size]} for i in range(len(groups))
    ]
    if groups_in_place != [{id(lay) for lay in g} for g in groups]:
        # one batch move: the canvas lays out the grid again once, not once per layer
        index = {id(lay): i for i, lay in enumerate(current)}
        viewer.layers.move_multiple([index[id(lay)] for lay in reversed(wanted)], len(current))
    if viewer.grid.stride != -size:
        viewer.grid.stride = -size
    if not viewer.grid.enabled:
        viewer.grid.enabled = True
    return groups
