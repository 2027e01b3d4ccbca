"""Images and labels of a SpatialData object as napari layer-data tuples (pure: no Qt, no viewer).

Everything is drawn in one coordinate system (cs) of the SpatialData object, in napari's
``(y, x)`` order, so the layers line up with cell points given in that cs.

Conventions
-----------
* Pixels: spatialdata's pixel ``i`` covers ``[i, i + 1)`` of the element's intrinsic
  coordinates (its centre is ``i + 0.5``), napari draws pixel ``i`` centred on data coordinate
  ``i``. A layer's ``affine`` is therefore the element's transformation to the cs composed with a
  ``+0.5`` translation in data space (:func:`raster_affine`).
* Nothing is computed eagerly: single-scale elements stay dask arrays, multiscale ones (an
  xarray ``DataTree`` of ``scale0``, ``scale1``...) become napari multiscale data (a list of
  their levels' dask arrays).
* Per-FOV tiles (CosMx stores one image and one labels element per FOV, hundreds of them)
  never become one layer each: elements of a kind that share the linear part of their
  transformation and differ only by a translation are stitched into one
  :class:`MosaicArray` layer with a small strided pyramid, so napari reads only the tiles in
  view. Other elements get a layer each, at most :data:`MAX_LAYERS_PER_KIND` per kind.
* Every layer carries ``metadata[META_KEY]`` = ``{"kind": "image" | "labels", "elements":
  [...], "coordinate_system": cs, "store": store}``, plus ``"channels"`` for images,
  ``"contour"`` for outlined labels (napari takes no ``contour`` keyword: apply it with
  :func:`style_raster_layer` once the layer is added) and a one-line ``"note"`` when
  something was left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_spatial_impute.io.sdata import coordinate_systems_of, cs_matrix, element_levels
from napari_spatial_impute.viz.layers import META_KEY, LayerData

#: Images with more channels than this show their first channel only.
MAX_CHANNELS = 8
#: Layers of elements that are not tiles, per kind; the rest are noted in the metadata.
MAX_LAYERS_PER_KIND = 16
#: ``metadata[META_KEY]["kind"]`` of a store's image and labels layers (also their layer types).
IMAGE_KIND = "image"
LABELS_KIND = "labels"
RASTER_KINDS = (IMAGE_KIND, LABELS_KIND)
#: A mosaic gets coarser levels (each :data:`PYRAMID_FACTOR` times smaller) while its
#: coarsest level is wider than this many pixels.
PYRAMID_MAX_SIZE = 2048
PYRAMID_FACTOR = 4
#: Tiles may overlap by at most this fraction of the smaller tile (FOVs overlap a little);
#: elements overlapping more (cell and nucleus labels of one FOV) go to separate layers.
MAX_TILE_OVERLAP = 0.25
#: Opacity of labels layers (the image stays visible below).
LABELS_OPACITY = 0.6

_HALF_PIXEL = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------- public API
def raster_affine(element: Any, coordinate_system: str) -> np.ndarray:
    """The 3x3 ``(y, x)`` napari affine of an image/labels element in ``coordinate_system``.

    The element's transformation to the cs composed with a half-pixel translation: napari
    centres pixel ``i`` on data coordinate ``i``, spatialdata on intrinsic coordinate ``i + 0.5``.
    """
    return cs_matrix(element, coordinate_system, ("y", "x")) @ _HALF_PIXEL


def raster_layers(
    sdata: Any,
    coordinate_system: str,
    *,
    labels_outline: bool = True,
    store: str | None = None,
) -> list[LayerData]:
    """Layer-data tuples of the images and labels of ``sdata`` in ``coordinate_system``.

    Images come first, then labels (napari draws later layers above earlier ones). Elements
    with no transformation to the cs are skipped; a cs without rasters gives ``[]``.

    Parameters
    ----------
    sdata
        A ``spatialdata.SpatialData``.
    coordinate_system
        The cs the layers are drawn in (the cell points must be in its ``(y, x)``).
    labels_outline
        Draw labels as outlines over the image rather than filled: ``contour=1`` in the
        layer's metadata, set on the layer by :func:`style_raster_layer`.
    store
        Where ``sdata`` was read from, recorded in each layer's metadata.
    """
    out: list[LayerData] = []
    for kind, elements in ((IMAGE_KIND, sdata.images), (LABELS_KIND, sdata.labels)):
        rasters, notes = _collect(elements, kind, coordinate_system)
        groups = _at_most(_plan(rasters), kind, notes)
        n_mosaics = sum(len(g) > 1 for g in groups)
        numbered = 0
        for group in groups:
            if len(group) > 1:
                numbered += 1
                name = _mosaic_name(kind, len(group), numbered if n_mosaics > 1 else 0)
            else:
                name = group[0].name
            meta = {
                "kind": kind,
                "elements": [r.name for r in group],
                "coordinate_system": coordinate_system,
                "store": store,
            }
            if kind == IMAGE_KIND:
                out.append(_image_layer(group, name, meta, first=not out, notes=notes))
            else:
                out.append(_labels_layer(group, name, meta, outline=labels_outline, notes=notes))
    return out


def _at_most(groups: list[list[_Raster]], kind: str, notes: list[str]) -> list[list[_Raster]]:
    """All mosaics and the first :data:`MAX_LAYERS_PER_KIND` single elements (noting the rest)."""
    singles = [g for g in groups if len(g) == 1]
    if len(singles) <= MAX_LAYERS_PER_KIND:
        return groups
    notes.append(_left_out_note(kind, [g[0].name for g in singles[MAX_LAYERS_PER_KIND:]]))
    kept = {id(g) for g in singles[:MAX_LAYERS_PER_KIND]}
    return [g for g in groups if len(g) > 1 or id(g) in kept]


# --------------------------------------------------------------------------- lazy mosaic
class MosaicArray:
    """A lazy read-only array stitched from tiles placed on a common pixel grid.

    Tile ``k`` (any array with ``shape``, ``dtype`` and ``__getitem__``: dask, zarr, numpy)
    covers ``origins[k] + [0, tile.shape)`` on the two spatial axes ``yx`` of the level-0
    grid; the other axes are the same in every tile. Where tiles overlap a later tile wins;
    pixels of no tile are 0. ``stride`` makes a coarser pyramid level: its pixel ``j`` is
    level-0 pixel ``j * stride``. ``__getitem__`` (ints, slices, ``...``) reads only the tiles
    overlapping the request, all dask reads in one ``dask.compute``, into a numpy array; an
    index that keeps both spatial axes whole and picks along the others (a channel,
    ``m[c]``) is lazy and gives the mosaic of the picked tiles. With ``cache=True`` the
    first read materialises the whole level (for the coarsest level, which napari reads whole
    for its thumbnail on every refresh). ``id_offsets`` (labels) adds ``id_offsets[k]`` to the
    nonzero pixels of tile ``k`` as they are read, so ids repeated across tiles (per-FOV
    segmentations) become unique; ``dtype`` must then hold the largest id.
    """

    def __init__(
        self,
        tiles: Sequence[Any],
        origins: Any,
        shape: Sequence[int],
        *,
        yx: tuple[int, int] = (0, 1),
        stride: int = 1,
        dtype: Any = None,
        cache: bool = False,
        id_offsets: Sequence[int] | None = None,
    ) -> None:
        self.tiles = list(tiles)
        self.id_offsets = None if id_offsets is None else [int(o) for o in id_offsets]
        self.origins = np.asarray(origins, dtype=np.int64).reshape(len(self.tiles), 2)
        self.sizes = np.array(
            [[t.shape[yx[0]], t.shape[yx[1]]] for t in self.tiles], dtype=np.int64
        ).reshape(len(self.tiles), 2)
        self.base_shape = tuple(int(s) for s in shape)
        self.yx = (yx[0] % len(self.base_shape), yx[1] % len(self.base_shape))
        self.stride = int(stride)
        self._dtype = np.dtype(dtype if dtype is not None else self.tiles[0].dtype)
        self._cache = cache
        self._full: np.ndarray | None = None
        self.reads = 0  # tiles read so far (diagnostics and tests)

    # --- array protocol -----------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        """Data type of the mosaic (of its tiles)."""
        return self._dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """Level shape: the level-0 shape with the spatial axes divided by ``stride``."""
        shp = list(self.base_shape)
        for ax in self.yx:
            shp[ax] = -(-shp[ax] // self.stride)
        return tuple(shp)

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.base_shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (
            f"MosaicArray(shape={self.shape}, dtype={self.dtype}, tiles={len(self.tiles)}, "
            f"stride={self.stride})"
        )

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self[...]
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def level(self, stride: int, *, cache: bool = False) -> MosaicArray:
        """The same tiles as a coarser level (pixel ``j`` = level-0 pixel ``j * stride``)."""
        return self.with_ids(self.id_offsets, self.dtype, stride=stride, cache=cache)

    def with_ids(
        self,
        id_offsets: Sequence[int] | None,
        dtype: Any,
        *,
        stride: int | None = None,
        cache: bool | None = None,
    ) -> MosaicArray:
        """The same tiles (read lazily, nothing copied) with tile ``k``'s nonzero ids shifted
        by ``id_offsets[k]`` into ``dtype``."""
        return MosaicArray(
            self.tiles,
            self.origins,
            self.base_shape,
            yx=self.yx,
            stride=self.stride if stride is None else stride,
            dtype=dtype,
            cache=self._cache if cache is None else cache,
            id_offsets=id_offsets,
        )

    def __getitem__(self, key: Any) -> Any:
        """Pixels as a numpy array; a pick along non-spatial axes only is lazy (a mosaic)."""
        norm = self._normalise(key)
        if self._picks_lead_axes_only(norm):
            return self._pick(norm)
        if self._cache:
            if self._full is None:
                self._full = self._read(self._normalise(...))
            return self._full[key]
        return self._read(norm)

    def _picks_lead_axes_only(self, key: list[int | slice]) -> bool:
        """Whether ``key`` keeps both spatial axes whole and picks along another axis.

        napari's ``channel_axis`` split indexes each level with ``[c, :, :]``: that must stay
        lazy (the whole level would be read otherwise).
        """
        whole = slice(None)
        spatial_whole = all(key[ax] == whole for ax in self.yx)
        lead = [k for ax, k in enumerate(key) if ax not in self.yx]
        return spatial_whole and any(k != whole for k in lead)

    def _pick(self, key: list[int | slice]) -> MosaicArray:
        """The mosaic of the tiles indexed along the non-spatial axes (lazy for dask tiles)."""
        tile_key = tuple(slice(None) if ax in self.yx else k for ax, k in enumerate(key))
        kept = [ax for ax, k in enumerate(key) if not isinstance(k, int)]
        base = [
            self.base_shape[ax] if ax in self.yx else len(range(*k.indices(self.base_shape[ax])))
            for ax, k in enumerate(key)
            if isinstance(k, slice)
        ]
        return MosaicArray(
            [t[tile_key] for t in self.tiles],
            self.origins,
            base,
            yx=(kept.index(self.yx[0]), kept.index(self.yx[1])),
            stride=self.stride,
            dtype=self.dtype,
            cache=self._cache,
            id_offsets=self.id_offsets,
        )

    # --- reading ------------------------------------------------------------------------
    def _normalise(self, key: Any) -> list[int | slice]:
        """One int or slice per axis (``...`` expanded, ints bounds-checked)."""
        key = key if isinstance(key, tuple) else (key,)
        if sum(k is Ellipsis for k in key) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if any(k is Ellipsis for k in key):
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (self.ndim - len(key) + 1)
            key = key[:i] + fill + key[i + 1 :]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for a {self.ndim}-d MosaicArray")
        key = key + (slice(None),) * (self.ndim - len(key))
        out: list[int | slice] = []
        for k, n in zip(key, self.shape, strict=True):
            if isinstance(k, slice):
                out.append(k)
            elif isinstance(k, int | np.integer) and not isinstance(k, bool):
                i = int(k) + n if int(k) < 0 else int(k)
                if not 0 <= i < n:
                    raise IndexError(f"index {int(k)} is out of bounds for an axis of size {n}")
                out.append(i)
            else:
                raise TypeError(f"MosaicArray supports int, slice and ... indices, not {k!r}")
        return out

    def _read(self, key: list[int | slice]) -> np.ndarray:
        """Assemble the requested block from the overlapping tiles (later tiles win)."""
        shape = self.shape
        # level-0 indices asked for on each spatial axis (ascending or descending)
        wanted = []
        for ax in self.yx:
            k = key[ax]
            idx = np.array([k]) if isinstance(k, int) else np.arange(*k.indices(shape[ax]))
            wanted.append(idx * self.stride)
        keep = [k if isinstance(k, slice) else slice(k, k + 1) for k in key]
        out_shape = [len(range(*s.indices(n))) for s, n in zip(keep, shape, strict=True)]
        out = np.zeros(out_shape, dtype=self.dtype)
        if out.size:
            self._fill(out, keep, wanted)
        return out[tuple(0 if isinstance(k, int) else slice(None) for k in key)]

    def _fill(self, out: np.ndarray, keep: list[slice], wanted: list[np.ndarray]) -> None:
        lo = np.array([w.min() for w in wanted])
        hi = np.array([w.max() for w in wanted])
        hits = np.flatnonzero(
            np.all(self.origins <= hi, axis=1) & np.all(self.origins + self.sizes > lo, axis=1)
        )
        targets: list[tuple[tuple[slice, ...], tuple[int, ...], int]] = []
        blocks: list[Any] = []
        for t in hits:
            part = self._tile_part(int(t), keep, wanted)
            if part is not None:
                tile_key, out_key, flip = part
                blocks.append(self.tiles[t][tile_key])
                targets.append((out_key, flip, int(t)))
        self.reads += len(blocks)
        for (out_key, flip, k), block in zip(targets, _materialise(blocks), strict=True):
            block = np.asarray(block)
            if self.id_offsets is not None and self.id_offsets[k]:
                shifted = block.astype(self.dtype)
                shifted[block != 0] += self.dtype.type(self.id_offsets[k])
                block = shifted
            if flip:
                block = np.flip(block, axis=flip)
            out[out_key] = block

    def _tile_part(
        self, t: int, keep: list[slice], wanted: list[np.ndarray]
    ) -> tuple[tuple[slice, ...], tuple[slice, ...], tuple[int, ...]] | None:
        """``(tile key, output key, axes to flip)`` of tile ``t``, or ``None`` if it misses."""
        tile_key = list(keep)
        out_key = [slice(None)] * len(keep)
        flip: list[int] = []
        for i, ax in enumerate(self.yx):
            o, n = int(self.origins[t, i]), int(self.sizes[t, i])
            inside = np.flatnonzero((wanted[i] >= o) & (wanted[i] < o + n))
            if inside.size == 0:
                return None
            local = wanted[i][inside] - o
            step = abs(int(local[1] - local[0])) if local.size > 1 else 1
            tile_key[ax] = slice(int(local.min()), int(local.max()) + 1, step)
            out_key[ax] = slice(int(inside[0]), int(inside[-1]) + 1)
            if local.size > 1 and local[1] < local[0]:
                flip.append(ax)
        return tuple(tile_key), tuple(out_key), tuple(flip)


def _materialise(blocks: list[Any]) -> list[Any]:
    """The blocks as arrays; dask blocks are computed together (one graph, one thread pool)."""
    lazy = [i for i, b in enumerate(blocks) if hasattr(b, "__dask_graph__")]
    if not lazy:
        return blocks
    import dask

    done = dask.compute(*(blocks[i] for i in lazy))
    out = list(blocks)
    for i, arr in zip(lazy, done, strict=True):
        out[i] = arr
    return out


def mosaic_pyramid(
    tiles: Sequence[Any], origins: Any, *, yx: tuple[int, int] = (0, 1)
) -> list[MosaicArray]:
    """Level 0 of the mosaic of ``tiles`` plus strided levels while wider than 2048 px.

    ``origins`` are the level-0 pixels of the tiles' ``[0, 0]`` (non-negative). The level-0
    grid is padded to a multiple of the coarsest stride so every level's downsampling factor
    is exact (napari derives the factors from the level shapes). The coarsest level of a
    pyramid caches itself (napari reads it whole for the thumbnail).
    """
    origins = np.asarray(origins, dtype=np.int64).reshape(len(tiles), 2)
    sizes = np.array([[t.shape[yx[0]], t.shape[yx[1]]] for t in tiles], dtype=np.int64)
    extent = (origins + sizes).max(axis=0)
    factors = [1]
    while math.ceil(int(extent.max()) / factors[-1]) > PYRAMID_MAX_SIZE:
        factors.append(factors[-1] * PYRAMID_FACTOR)
    extent = -(-extent // factors[-1]) * factors[-1]
    shape = list(tiles[0].shape)
    shape[yx[0]], shape[yx[1]] = int(extent[0]), int(extent[1])
    base = MosaicArray(tiles, origins, shape, yx=yx)
    return [base] + [base.level(f, cache=(f == factors[-1])) for f in factors[1:]]


# --------------------------------------------------------------------------- elements
@dataclass
class _Raster:
    """One image/labels element in the cs: levels (channel axis first), dims, transformation."""

    name: str
    kind: str
    levels: list[Any]
    channels: list[str] | None
    matrix: np.ndarray  # 3x3 (y, x) transformation to the cs (no half pixel)
    extra: tuple[int, ...] = field(default=())  # shape of the non-spatial axes

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.levels[0].dtype)

    @property
    def yx_shape(self) -> tuple[int, int]:
        return int(self.levels[0].shape[-2]), int(self.levels[0].shape[-1])


def _collect(elements: Any, kind: str, cs: str) -> tuple[list[_Raster], list[str]]:
    """The 2D elements with a transformation to ``cs``, and notes about skipped 3D ones."""
    from spatialdata.models import get_axes_names, get_channel_names

    rasters: list[_Raster] = []
    skipped: list[str] = []
    for name, element in elements.items():
        if cs not in coordinate_systems_of(element):
            continue
        axes = tuple(get_axes_names(element))
        if "z" in axes:
            skipped.append(str(name))
            continue
        levels = element_levels(element)
        channels = [str(c) for c in get_channel_names(element)] if "c" in axes else None
        rasters.append(
            _Raster(
                str(name),
                kind,
                levels,
                channels,
                cs_matrix(element, cs, ("y", "x")),
                tuple(levels[0].shape[:-2]),
            )
        )
    notes = [f"3D {kind} left out (2D only): {_names(skipped)}."] if skipped else []
    return rasters, notes


def _names(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(repr(s) for s in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _left_out_note(kind: str, names: Sequence[str]) -> str:
    return (
        f"{len(names)} more {kind} elements were left out (at most {MAX_LAYERS_PER_KIND} "
        f"layers per kind): {_names(names)}."
    )


def _mosaic_name(kind: str, n: int, number: int) -> str:
    base = f"{'images' if kind == 'image' else 'labels'} ({n} FOVs)"
    return f"{base} #{number}" if number else base


# --------------------------------------------------------------------------- tiling plan
def _plan(rasters: list[_Raster]) -> list[list[_Raster]]:
    """Groups of elements drawn as one layer each, in the order of their first element.

    Elements of the same channels, dtype and linear transformation part whose footprints on
    the common pixel grid overlap little are tiles of one mosaic (groups of 2 or more); an
    element fits into the first such group it does not overlap, else starts a new one.
    """
    groups: list[list[_Raster]] = []
    boxes: list[list[np.ndarray]] = []  # per group: tile boxes (y0, x0, y1, x1) in pixels
    for r in rasters:
        offset = _pixel_offset(r)
        for g, gboxes in zip(groups, boxes, strict=True):
            if offset is None or not _compatible(g[0], r):
                continue
            box = np.concatenate([offset, offset + np.array(r.yx_shape)])
            if _overlaps(box, np.array(gboxes)):
                continue
            g.append(r)
            gboxes.append(box)
            break
        else:
            groups.append([r])
            start = offset if offset is not None else np.zeros(2)
            boxes.append([np.concatenate([start, start + np.array(r.yx_shape)])])
    return groups


def _pixel_offset(r: _Raster) -> np.ndarray | None:
    """The translation in pixels of the element's grid (rounded), ``None`` if singular."""
    lin = r.matrix[:2, :2]
    if abs(np.linalg.det(lin)) < 1e-12:
        return None
    return np.round(np.linalg.solve(lin, r.matrix[:2, 2]))


def _compatible(a: _Raster, b: _Raster) -> bool:
    """Same kind, channels, dtype, non-spatial shape and linear part of the transformation."""
    la, lb = a.matrix[:2, :2], b.matrix[:2, :2]
    return (
        a.kind == b.kind
        and a.channels == b.channels
        and a.dtype == b.dtype
        and a.extra == b.extra
        and bool(np.allclose(la, lb, rtol=1e-6, atol=1e-9 * float(np.abs(la).max())))
    )


def _overlaps(box: np.ndarray, others: np.ndarray) -> bool:
    """Whether ``box`` covers more than :data:`MAX_TILE_OVERLAP` of itself or any other box."""
    lo = np.maximum(box[:2], others[:, :2])
    hi = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    smaller = np.minimum(np.prod(box[2:] - box[:2]), np.prod(others[:, 2:] - others[:, :2], axis=1))
    return bool(np.any(inter > MAX_TILE_OVERLAP * smaller))


def _mosaic(group: list[_Raster], prepare: Any, yx: tuple[int, int]) -> tuple[list[Any], Any]:
    """Pyramid levels of a group of tiles and the 3x3 cs transformation of its grid."""
    offsets = np.array([_pixel_offset(r) for r in group], dtype=np.float64)
    origin = offsets.min(axis=0)
    levels = mosaic_pyramid(
        [prepare(r.levels[0]) for r in group], (offsets - origin).astype(np.int64), yx=yx
    )
    lin = group[0].matrix[:2, :2]
    matrix = np.eye(3)
    matrix[:2, :2] = lin
    matrix[:2, 2] = lin @ origin
    return levels, matrix


def _data_and_affine(
    group: list[_Raster], prepare: Any, yx: tuple[int, int]
) -> tuple[Any, np.ndarray, bool]:
    """Layer data (one array or a list of levels), napari affine and whether multiscale."""
    if len(group) > 1:
        levels, matrix = _mosaic(group, prepare, yx)
    else:
        levels, matrix = [prepare(a) for a in group[0].levels], group[0].matrix
    multiscale = len(levels) > 1
    return (levels if multiscale else levels[0]), matrix @ _HALF_PIXEL, multiscale


# --------------------------------------------------------------------------- layers
def _image_layer(
    group: list[_Raster], name: str, meta: dict[str, Any], *, first: bool, notes: list[str]
) -> LayerData:
    """An image layer: RGB(A), a few channels (``channel_axis``), or the first channel."""
    r = group[0]
    channels = r.channels or []
    n = len(channels)
    is_rgb = n in (3, 4) and r.dtype == np.uint8
    kwargs: dict[str, Any] = {}
    note = list(notes)
    if is_rgb:
        data, affine, multiscale = _data_and_affine(group, _to_rgb, (0, 1))
        kwargs["rgb"] = True
    elif 1 < n <= MAX_CHANNELS:
        data, affine, multiscale = _data_and_affine(group, _same, (1, 2))
        kwargs["channel_axis"] = 0
        kwargs["name"] = [f"{name} · {c}" for c in channels]
        kwargs["blending"] = ["translucent_no_depth" if first else "additive"] + ["additive"] * (
            n - 1
        )
    else:
        data, affine, multiscale = _data_and_affine(group, _first_channel, (0, 1))
        if n > MAX_CHANNELS:
            note.append(f"{n} channels: showing the first only ({channels[0]!r}).")
    kwargs.setdefault("name", name)
    kwargs.setdefault("blending", "translucent_no_depth" if first else "additive")
    kwargs.update(affine=affine, multiscale=multiscale)
    kwargs["metadata"] = {META_KEY: _meta(meta, note, channels=channels)}
    return (data, kwargs, IMAGE_KIND)


def _labels_layer(
    group: list[_Raster], name: str, meta: dict[str, Any], *, outline: bool, notes: list[str]
) -> LayerData:
    """A labels layer, translucent, drawn as outlines when ``outline``."""
    data, affine, multiscale = _data_and_affine(group, _as_labels, (0, 1))
    kwargs: dict[str, Any] = {
        "name": name,
        "affine": affine,
        "multiscale": multiscale,
        "opacity": LABELS_OPACITY,
        "blending": "translucent",
        "metadata": {META_KEY: _meta(meta, notes, contour=1 if outline else 0)},
    }
    return (data, kwargs, LABELS_KIND)


def prefetch(layers: list[LayerData]) -> None:
    """Read what napari reads whole when a layer is added (the coarsest level of a multiscale
    layer, for its thumbnail), so that a worker pays it and the main thread finds it cached.

    A stitched mosaic caches its coarsest level; other levels are spatialdata's own (small)."""
    for data, kwargs, _ in layers:
        if kwargs.get("multiscale") and isinstance(data, list) and data:
            coarsest = data[-1]
            if isinstance(coarsest, MosaicArray):
                coarsest[...]


def style_raster_layer(layer: Any) -> None:
    """Apply what a layer-data tuple cannot carry: the labels outline (``contour``).

    napari 0.9's ``Labels``/``add_labels`` take no ``contour`` keyword, so
    :func:`raster_layers` records it in ``metadata[META_KEY]["contour"]``; call this on each
    layer after adding it. Layers without that entry are left as they are.
    """
    meta = getattr(layer, "metadata", {}).get(META_KEY, {})
    contour = meta.get("contour") if isinstance(meta, dict) else None
    if contour and hasattr(layer, "contour"):
        layer.contour = int(contour)


def _meta(meta: dict[str, Any], notes: Iterable[str], **extra: Any) -> dict[str, Any]:
    out = {**meta, **{k: v for k, v in extra.items() if v}}
    text = " ".join(notes)
    if text:
        out["note"] = text
    return out


def _same(a: Any) -> Any:
    return a


def _to_rgb(a: Any) -> Any:
    """``(c, y, x)`` -> ``(y, x, c)``, lazily (dask transpose)."""
    return a.transpose(1, 2, 0)


def _first_channel(a: Any) -> Any:
    """The ``(y, x)`` plane of the first channel (or the array itself without channels)."""
    return a[0] if a.ndim == 3 else a


def _as_labels(a: Any) -> Any:
    """Integer labels (lazy cast of float labels)."""
    return a if np.issubdtype(a.dtype, np.integer) else a.astype(np.int32)
