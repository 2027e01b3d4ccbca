"""Cells in their own shapes: a result's rows matched to a store's labels or shapes (pure: no Qt).

A result read from a SpatialData store keeps each cell's identity there: ``obs[region_key]``
names the element (a labels image, one per FOV in CosMx, or a shapes element) and
``obs[instance_key]`` the cell's id in it (``uns['spatialdata']``, see
:func:`~napari_spatial_impute.io.sdata.spatial_source`). This module turns what the Explore
widget shows (one value and one RGBA colour per result row) into what colours those cells:

* **labels**: one key per cell, the label value drawn in a *cell labels* layer, and a colour
  table ``key -> RGBA`` (napari's direct label colormap). Per-FOV label images repeat their ids,
  so the cell labels layer reads the store's tiles through a :class:`~.rasters.MosaicArray` that
  adds a per-tile offset (:func:`tile_id_offsets`): the key of the cell with id ``i`` in tile
  ``k`` is ``offsets[k] + i``, exact and lazy (no pixel is copied or read ahead).
* **shapes**: polygons (Xenium, MERSCOPE) as a Shapes layer and circles as a Points layer whose
  sizes are the circles' diameters, both coloured by one ``face_color`` array.

The hover readout of a mask is the same as a point's: the value, the cell, its FOV, its most
likely clusters (:func:`~.explore.hover_features`), in a features table indexed by label value.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute.io.files import categorical_from_codes
from napari_spatial_impute.io.sdata import cs_matrix, spatial_source
from napari_spatial_impute.viz.explore import hover_features
from napari_spatial_impute.viz.layers import META_KEY, LayerData
from napari_spatial_impute.viz.rasters import LABELS_KIND, MosaicArray
from napari_spatial_impute.viz.sections import resolve_sample_key

#: ``metadata[META_KEY]["kind"]`` of the layers built here.
CELL_LABELS_KIND = "cell_labels"
CELL_SHAPES_KIND = "cell_shapes"
CELL_VALUES_KIND = "cell_values"
#: Metadata flag of a cells' Points layer hidden because its cells are drawn as masks (zoomed
#: in): still what is shown, so its colour scale stays.
HIDDEN_FOR_MASKS = "hidden_for_masks"
CELL_KINDS = (CELL_LABELS_KIND, CELL_SHAPES_KIND, CELL_VALUES_KIND)
#: More polygons than this are not drawn as shapes (napari's Shapes layer triangulates each
#: polygon in Python: minutes at 10^5); the cells stay points, with a note.
MAX_POLYGONS = 20_000
#: Opacity of the coloured cells (the image stays visible below).
CELL_OPACITY = 0.8
#: Feature column of the label value (napari's Labels look features up by it).
INDEX_COLUMN = "index"


@dataclass(frozen=True)
class CellIds:
    """Where each result row's cell is in its store: element (region) and id (instance)."""

    store: str
    coordinate_system: str
    region_key: str
    instance_key: str
    regions: np.ndarray  # element name of each row (str)
    instances: np.ndarray  # id of each row in its element (int64, or object when not whole)


def cell_ids(result: ad.AnnData | None) -> CellIds | None:
    """The store identity of the result's rows, ``None`` when it was not read from a store."""
    src = spatial_source(result) if result is not None else None
    if src is None or result is None:
        return None
    region_key, instance_key = str(src["region_key"]), str(src["instance_key"])
    if region_key not in result.obs or instance_key not in result.obs:
        return None
    inst = result.obs[instance_key].to_numpy()
    try:
        inst = inst.astype(np.int64)
    except (TypeError, ValueError):
        inst = inst.astype(str).astype(object)
    return CellIds(
        store=str(src["store"]),
        coordinate_system=str(src["coordinate_system"]),
        region_key=region_key,
        instance_key=instance_key,
        regions=result.obs[region_key].astype(str).to_numpy(),
        instances=inst,
    )


def same_store(a: str | None, b: str | None) -> bool:
    """Whether two recorded store paths name the same store."""
    if not a or not b:
        return False
    return os.path.realpath(str(a)) == os.path.realpath(str(b))


# --------------------------------------------------------------------------- labels
def tile_id_offsets(n_tiles: int, dtype: Any) -> tuple[np.ndarray, np.dtype]:
    """Per-tile id offsets that make ids of ``n_tiles`` tiles of ``dtype`` unique, and the dtype
    of the shifted ids.

    Tile ``k`` gets ``k * 2**bits`` (``bits`` of the tile's dtype, at most 32): any id a tile can
    hold stays inside its own range, so the keys are exact without reading a pixel. The result
    is ``uint32`` when it fits (8- and 16-bit tiles), else ``int64``.
    """
    bits = min(np.dtype(dtype).itemsize * 8, 32)
    span = 1 << bits
    offsets = np.arange(n_tiles, dtype=np.int64) * span
    top = n_tiles * span - 1
    out = np.dtype(np.uint32) if top <= np.iinfo(np.uint32).max else np.dtype(np.int64)
    return offsets, out


def cell_labels_data(data: Any, n_tiles: int) -> tuple[Any, list[int] | None]:
    """The data of a cell labels layer drawn from a store labels layer's ``data``.

    A mosaic of per-FOV tiles (or its pyramid levels) is read again with unique ids
    (:func:`tile_id_offsets`); a single element keeps its own ids. Returns ``(data, offsets)``,
    ``offsets`` ``None`` when the ids were kept.
    """
    levels = data if isinstance(data, list) else [data]
    if n_tiles < 2 or not all(isinstance(lv, MosaicArray) for lv in levels):
        return data, None
    offsets, dtype = tile_id_offsets(n_tiles, levels[0].tiles[0].dtype)
    shifted = [lv.with_ids(offsets.tolist(), dtype) for lv in levels]
    return (shifted if isinstance(data, list) else shifted[0]), offsets.tolist()


def cell_labels_layer(source_data: Any, source_meta: dict[str, Any], name: str) -> LayerData:
    """A cell labels layer over the same pixels as a store's labels layer (filled, keyed
    uniquely, nothing coloured yet); ``source_meta`` is that layer's plugin metadata."""
    elements = [str(e) for e in source_meta.get("elements", [])]
    data, offsets = cell_labels_data(source_data, len(elements))
    meta = {
        "kind": CELL_LABELS_KIND,
        "elements": elements,
        "id_offsets": offsets,
        "store": source_meta.get("store"),
        "coordinate_system": source_meta.get("coordinate_system"),
    }
    kwargs = {
        "name": name,
        "opacity": CELL_OPACITY,
        "blending": "translucent",
        "metadata": {META_KEY: meta},
    }
    return (data, kwargs, LABELS_KIND)


def label_keys(ids: CellIds, elements: Sequence[str], offsets: Sequence[int] | None) -> np.ndarray:
    """The label value of each result row in a layer of ``elements`` (0: not in that layer).

    ``offsets[k]`` is added to the ids of element ``elements[k]`` (:func:`cell_labels_data`).
    Rows whose id is not a whole number get 0 (labels are whole ids).
    """
    keys = np.zeros(len(ids.regions), dtype=np.int64)
    if ids.instances.dtype == object:
        return keys
    for k, element in enumerate(elements):
        rows = np.flatnonzero(ids.regions == element)
        if rows.size:
            shift = int(offsets[k]) if offsets is not None else 0
            keys[rows] = np.where(ids.instances[rows] > 0, ids.instances[rows] + shift, 0)
    return keys


def last_rows(keys: np.ndarray) -> np.ndarray:
    """The rows drawn in a layer (key > 0), one per key: a key met twice (two rows naming one
    cell) keeps its last row, as a colour table set row after row would."""
    drawn = np.flatnonzero(keys > 0)
    _, last = np.unique(keys[drawn][::-1], return_index=True)
    return drawn[len(drawn) - 1 - last]


def colour_table(keys: np.ndarray, rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, colours)`` of the rows drawn in a layer (key > 0), one entry per key (the last
    row's colour, :func:`last_rows`)."""
    pick = last_rows(keys)
    return keys[pick], np.asarray(rgba, dtype=np.float32)[pick]


#: A lookup from label key to value is a dense vector up to this many keys (16 MiB of
#: float32), a sorted search above (per-FOV ids shifted by 2**32 a tile).
DENSE_LOOKUP_MAX = 1 << 22


@dataclass(frozen=True)
class KeyLookup:
    """One float32 per label key, NaN for any other key (background 0, cells of no row).

    ``keys is None``: ``table[key]`` (a dense vector whose first and last entries are NaN);
    else ``table[j]`` is the value of ``keys[j]`` (sorted). Calling it maps a labels array
    pixel by pixel (cost proportional to the pixels, not to the number of cells).
    """

    table: np.ndarray
    keys: np.ndarray | None = None

    def __call__(self, labels: Any) -> np.ndarray:
        lab = np.asarray(labels)
        if self.keys is None:  # out of range (negative, beyond the last key): a NaN end
            return np.take(self.table, lab, mode="clip")
        if not len(self.keys):
            return np.full(lab.shape, np.nan, dtype=np.float32)
        flat = lab.astype(np.int64, copy=False)
        pos = np.minimum(np.searchsorted(self.keys, flat), len(self.keys) - 1)
        return np.where(self.keys[pos] == flat, self.table[pos], np.float32(np.nan))


def key_lookup(keys: np.ndarray, values: np.ndarray) -> KeyLookup:
    """The :class:`KeyLookup` of each drawn row's value (key > 0; a key's last row wins)."""
    pick = last_rows(keys)
    k = keys[pick].astype(np.int64)
    v = np.asarray(values, dtype=np.float32)[pick]
    top = int(k.max()) if len(k) else 0
    if top < DENSE_LOOKUP_MAX:
        table = np.full(top + 2, np.nan, dtype=np.float32)
        table[k] = v
        return KeyLookup(table)
    order = np.argsort(k)
    return KeyLookup(v[order], k[order])


@dataclass(frozen=True)
class ValueColours:
    """How the cells' values become exactly their rows' colours in an image: ``values`` per row
    (what the image holds, NaN transparent), ``colors`` ``(n, 4)`` one per bin, ``controls``
    ``n + 1`` bin edges from 0 to 1 (a step colormap, napari's ``interpolation='zero'``) and
    the contrast ``limits`` mapping values onto 0..1. ``by_value``: the values are the shown
    values (a hover reads them); else they are indices into ``colors``."""

    values: np.ndarray
    colors: np.ndarray
    controls: np.ndarray
    limits: tuple[float, float]
    by_value: bool


#: At most this many bins in a step colormap of values (a 256-colour lookup gives <= 256).
MAX_BINS = 1024


def value_colours(values: np.ndarray, rgba: np.ndarray, max_bins: int = MAX_BINS) -> ValueColours:
    """A step colormap giving every row exactly its colour from the value an image holds.

    When a row's colour is a function of its value (a colormap lookup, categories by code) and
    rows without a finite value are transparent, the image holds the values themselves: the
    rows sorted by value form runs of one colour, each run a bin, edges half-way between runs.
    Otherwise (two colours for one value, a coloured NaN, more than ``max_bins`` runs) it holds
    each row's index into its distinct colours, one bin each.
    """
    vals = np.asarray(values, dtype=np.float32).ravel()
    colours = np.asarray(rgba, dtype=np.float32).reshape(-1, 4)
    by_value = _value_bins(vals, colours, max_bins)
    if by_value is not None:
        return _two_bins_at_least(by_value)
    palette, index = np.unique(colours, axis=0, return_inverse=True)
    n = max(len(palette), 1)
    controls = np.linspace(0.0, 1.0, n + 1).astype(np.float32)
    if not len(palette):
        palette = np.zeros((1, 4), dtype=np.float32)
    return _two_bins_at_least(
        ValueColours(
            index.ravel().astype(np.float32) + np.float32(0.5),
            palette,
            controls,
            (0.0, float(n)),
            False,
        )
    )


def _two_bins_at_least(colours: ValueColours) -> ValueColours:
    """One colour as two equal bins (the GPU's step colormap needs two colours)."""
    if len(colours.colors) > 1:
        return colours
    two = np.repeat(colours.colors[:1], 2, axis=0)
    controls = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    return ValueColours(colours.values, two, controls, colours.limits, colours.by_value)


def _value_bins(vals: np.ndarray, colours: np.ndarray, max_bins: int) -> ValueColours | None:
    finite = np.isfinite(vals)
    if (colours[~finite] != 0).any():  # NaN (and background) must stay transparent
        return None
    order = np.argsort(vals[finite], kind="stable")
    v, c = vals[finite][order], colours[finite][order]
    if not len(v):
        return ValueColours(
            vals, np.zeros((1, 4), np.float32), np.array([0, 1], np.float32), (0.0, 1.0), True
        )
    step = np.flatnonzero((c[1:] != c[:-1]).any(axis=1)) + 1
    if (v[step] == v[step - 1]).any() or len(step) + 1 > max_bins:
        return None
    lo, hi = float(v[0]), float(v[-1])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    norm = ((v.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
    edges = ((norm[step - 1].astype(np.float64) + norm[step]) / 2).astype(np.float32)
    controls = np.concatenate([[0.0], edges, [1.0]]).astype(np.float32)
    # napari's step lookup (searchsorted, side right) must put each value in its own run
    runs = np.searchsorted(controls, norm, side="right") - 1
    if not np.array_equal(np.clip(runs, 0, len(step)), np.cumsum(np.isin(np.arange(len(v)), step))):
        return None
    return ValueColours(vals, c[np.concatenate([[0], step])], controls, (lo, hi), True)


class LookupArray:
    """A lazy view of a labels array (a level) through a :class:`KeyLookup`: pixel ``p`` reads
    ``lookup(labels[p])`` as float32. Nothing is read ahead or copied whole: each read maps
    the labels read for it, and the last ``cache`` reads' label pixels are kept, so swapping
    ``lookup`` and reading the same view again (a gene switch, napari's refresh) maps pixels
    already read, without reading the store again."""

    def __init__(self, labels: Any, lookup: KeyLookup, cache: int = 2) -> None:
        self.labels = labels
        self.lookup = lookup
        self._cache: dict[Any, np.ndarray] = {}
        self._size = int(cache)
        self.reads = 0  # label reads (not served from the cache)

    @property
    def dtype(self) -> np.dtype:
        """float32."""
        return np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        """The labels' shape."""
        return tuple(int(s) for s in self.labels.shape)

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of pixels."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self[...]
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        ck = _hashable(key)
        labels = self._cache.pop(ck, None) if ck is not None else None
        if labels is not None:
            self._cache[ck] = labels  # the most recent last
        else:
            labels = np.asarray(self.labels[key])
            self.reads += 1
            if ck is not None:
                self._cache[ck] = labels
                while len(self._cache) > self._size:
                    del self._cache[next(iter(self._cache))]
        return self.lookup(labels)


def _hashable(key: Any) -> Any:
    """A cache key of an index of ints, slices and ``...`` (``None`` for anything else)."""
    parts = key if isinstance(key, tuple) else (key,)
    out: list[Any] = []
    for part in parts:
        if isinstance(part, slice):
            out.append(("s", part.start, part.stop, part.step))
        elif part is Ellipsis or part is None:
            out.append(repr(part))
        elif isinstance(part, (int, np.integer)):
            out.append(int(part))
        else:
            return None
    try:
        hash(tuple(out))
    except TypeError:
        return None
    return tuple(out)


def shown_column(kind: str, name: str) -> str:
    """The hover column of what is shown (``Gad1``, ``Gad1 measured``, ``most likely cluster``)."""
    if kind == "predicted":
        return "most likely cluster"
    return name if kind == "imputed" else f"{name} {kind}"


def shown_features(
    result: ad.AnnData,
    keys: np.ndarray,
    kind: str,
    name: str,
    values: np.ndarray,
    categories: Sequence[str] | None = None,
    *,
    fov_key: str | None = None,
    sample_key: str | None = None,
    instance: tuple[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The hover table of the drawn rows (key > 0): the label value (``index``), the shown value
    (a category name for ``"predicted"``), the cell's id in its element, and the points' hover
    columns (cell, FOV, most likely clusters)."""
    rows = np.flatnonzero(keys > 0)
    vals = np.asarray(values)[rows]
    if categories is not None:
        codes = vals.astype(np.int64)
        shown: Any = categorical_from_codes(
            np.where((codes >= 0) & (codes < len(categories)), codes, -1), categories
        )
    else:
        shown = vals.astype(np.float32)
    df = pd.DataFrame({INDEX_COLUMN: keys[rows], shown_column(kind, name): shown})
    if instance is not None:
        df[instance[0]] = np.asarray(instance[1])[rows]
    hover = hover_features(result, rows, fov_key, resolve_sample_key(result, sample_key, fov_key))
    return pd.concat([df, hover.reset_index(drop=True)], axis=1)


# --------------------------------------------------------------------------- shapes
@dataclass
class CellShapes:
    """The cells of a store's shapes elements as layer data, and which result row is which.

    ``layer`` is a Shapes layer (polygons) or a Points layer (circles) tuple; ``rows[j]`` is the
    result row of the layer's item ``j`` (-1: a shape of no result row, left transparent).
    """

    layer: LayerData
    rows: np.ndarray


def shape_layer(sdata: Any, ids: CellIds, elements: Sequence[str], name: str) -> CellShapes | str:
    """The result's cells of shapes ``elements`` in the result's coordinate system, or a one-line
    reason why they stay points (too many polygons, no geometry)."""
    from geopandas import GeoDataFrame

    polys: list[np.ndarray] = []
    centres: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    kinds: set[str] = set()
    for element in elements:
        gdf = sdata[element]
        if not isinstance(gdf, GeoDataFrame) or len(gdf) == 0:
            continue
        m = cs_matrix(gdf, ids.coordinate_system, ("y", "x"))
        mine = np.flatnonzero(ids.regions == element)
        row_of = pd.Series(mine, index=pd.Index(ids.instances[mine]))
        row_of = row_of[~row_of.index.duplicated()]
        where = row_of.reindex(gdf.index).fillna(-1).to_numpy(np.int64)
        if where.max() < 0:  # ids compared as text (as the reader does when ints do not match)
            row_of.index = row_of.index.astype(str)
            where = row_of.reindex(gdf.index.astype(str)).fillna(-1).to_numpy(np.int64)
        geom = gdf.geometry
        types = set(geom.geom_type.dropna().unique())
        if types == {"Point"}:
            kinds.add("circles")
            xy = geom.get_coordinates().to_numpy()
            centres.append(_yx(m, xy))
            radius = gdf["radius"].to_numpy(np.float64) if "radius" in gdf else np.ones(len(gdf))
            sizes.append(2 * radius * np.sqrt(abs(np.linalg.det(m[:2, :2]))))
        else:
            kinds.add("polygons")
            for g in geom:
                poly = g.geoms[0] if g.geom_type == "MultiPolygon" else g
                polys.append(_yx(m, np.asarray(poly.exterior.coords)[:-1]))
        rows.append(where)
    if not rows:
        return f"no shapes of the cells in elements {', '.join(elements)}"
    if len(kinds) > 1:
        return "the elements mix circles and polygons; the cells stay points"
    all_rows = np.concatenate(rows)
    meta = {
        "kind": CELL_SHAPES_KIND,
        "elements": list(elements),
        "store": ids.store,
        "coordinate_system": ids.coordinate_system,
    }
    base = {"name": name, "opacity": CELL_OPACITY, "metadata": {META_KEY: meta}}
    if kinds == {"circles"}:
        kwargs = {**base, "size": np.concatenate(sizes), "border_width": 0}
        return CellShapes((np.concatenate(centres), kwargs, "points"), all_rows)
    if len(polys) > MAX_POLYGONS:
        return (
            f"{len(polys):,} polygons (over {MAX_POLYGONS:,}): the cells stay points (napari "
            "triangulates each polygon in Python, minutes at this size); a labels element of "
            "the same cells is coloured in its masks."
        )
    kwargs = {**base, "shape_type": "polygon", "edge_width": 0}
    return CellShapes((polys, kwargs, "shapes"), all_rows)


def _yx(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Element ``(x, y)`` points in the cs's napari ``(y, x)`` by the 3x3 ``(y, x)`` matrix ``m``."""
    yx = np.asarray(xy, dtype=np.float64)[:, ::-1]
    return yx @ m[:2, :2].T + m[:2, 2]


def shape_colours(rows: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """The face colour of each shape: its row's RGBA, transparent for shapes of no row."""
    out = np.zeros((len(rows), 4), dtype=np.float32)
    mine = rows >= 0
    out[mine] = np.asarray(rgba, dtype=np.float32)[rows[mine]]
    return out


# --------------------------------------------------------------------------- points or masks
#: Masks are drawn instead of points once a cell spans this many screen pixels; below it the
#: points (fast at 10^6 cells, and visible where a mask is a pixel) are drawn over them.
MASKS_FROM_PX = 8.0


def cell_spacing(xy: np.ndarray) -> float:
    """A typical cell's size in data units: the side of the bounding box's area per cell."""
    xy = np.asarray(xy, dtype=np.float64)
    xy = xy[np.isfinite(xy).all(axis=1)]
    if len(xy) < 2:
        return float("nan")
    area = float(np.prod(np.ptp(xy, axis=0)))
    return float(np.sqrt(area / len(xy))) if area > 0 else float("nan")


def masks_readable(spacing: float, zoom: float, min_px: float = MASKS_FROM_PX) -> bool:
    """Whether cells ``spacing`` data units wide span ``min_px`` screen pixels at ``zoom``
    (screen pixels per data unit)."""
    return bool(np.isfinite(spacing)) and spacing * zoom >= min_px
