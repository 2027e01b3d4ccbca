"""Build napari layer-data tuples from AnnData and back (pure: no Qt, no viewer needed).

Conventions
-----------
* ``obsm["spatial"]`` holds ``(x, y)`` or ``(x, y, z)`` per cell, as written by scanpy/squidpy.
  napari orders axes from slowest to fastest, so a layer's data is the reversed columns:
  ``(y, x)`` or ``(z, y, x)``. :func:`to_napari` and :func:`from_napari` convert.
* One Points layer per role for all samples (sections), never one per sample or field of view
  (FOV): the sample and the FOV are feature columns; samples sharing coordinates are laid out
  side by side in the layer's coordinates (:func:`section_spec`,
  :mod:`~napari_spatial_impute.viz.sections`; the writer takes the offsets off again). A
  data-set layer's ``features`` are its ``obs`` columns (text columns become pandas
  Categorical) plus :data:`CELL_COLUMN`, the cell name, which keeps points tied to their cells
  when points are deleted.
* Every plugin layer is built by :func:`points_spec` from the rows of a data set it shows (any
  rows: one sample, several, all; across samples with :func:`section_spec`), and carries one
  metadata dict, ``layer.metadata[META_KEY]``,
  read with :func:`plugin_meta` (its entries are listed there): ``kind`` (what the layer shows),
  ``rows``, ``fov``, ``value``; a data-set layer also holds the whole AnnData (``"adata"``) and
  its ``"role"`` (``"spatial"``, ``"result"`` or ``"reference"``), so other widgets read imputed
  genes from it and the writer saves it back with nothing lost. The plugin finds its layers by
  this metadata, never by their names (napari renames a layer whose name is taken, and the user
  may rename any layer). A result's layer is named like the Explore widget's
  most-likely-cluster layer (``"most likely <key>"``).
* Style: :func:`points_style` (size, no border), :func:`color_kwargs` / :func:`category_colors`
  / :func:`robust_limits` (colour), :func:`recolor` (in place).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute.io.files import find_fov_key, fov_labels
from napari_spatial_impute.io.palette import category_colors, stored_palette
from napari_spatial_impute.io.schema import UNS_KEY
from napari_spatial_impute.viz.coords import checked_coords, point_size, to_napari
from napari_spatial_impute.viz.sections import (
    drawn_point_size,
    resolve_sample_key,
    row_offsets,
    section_rows,
)

#: Key of the plugin's entry in ``layer.metadata``: one dict, read with :func:`plugin_meta`.
META_KEY = "spatial_impute"
#: Feature column holding each point's cell name (``obs_names``).
CELL_COLUMN = "obs_name"
#: Feature column of the exploration layers holding each point's FOV.
FOV_COLUMN = "fov"
#: ``kind`` of the most-likely-cluster layers and of the reference (UMAP) layer.
PREDICTED_ROLE = "predicted"
REFERENCE_ROLE = "reference"
#: ``kind`` of the linked-selection highlight layers.
HIGHLIGHT_ROLE = "link_highlight"

LayerData = tuple[Any, dict[str, Any], str]


@dataclass
class PointsSpec:
    """One Points layer to add: ``Points(spec.data, **spec.add_kwargs())``.

    Attributes
    ----------
    name
        Layer name.
    data
        ``(n, d)`` float64 napari coordinates (``(y, x)`` or ``(z, y, x)``).
    features
        One row per point; the colour column plus hover columns.
    color_column
        Column of ``features`` that colours the points (``None``: one plain colour).
    kwargs
        The other ``Points`` keywords (colour map or cycle, contrast limits, size, border,
        ``metadata`` = ``{META_KEY: {...}}``).
    """

    name: str
    data: np.ndarray
    features: pd.DataFrame
    color_column: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def add_kwargs(self) -> dict[str, Any]:
        """All keywords of ``Points`` except the data."""
        out = {"name": self.name, "features": self.features, **self.kwargs}
        if self.color_column is not None:
            out["face_color"] = self.color_column
        return out

    @property
    def meta(self) -> dict[str, Any]:
        """The plugin's metadata dict of the layer (see :func:`plugin_meta`)."""
        return self.kwargs["metadata"][META_KEY]

    def layer_data(self) -> LayerData:
        """``(data, kwargs, "points")``, as a napari reader or sample command returns."""
        return (self.data, self.add_kwargs(), "points")


# --------------------------------------------------------------------------- names
def layer_name(value: str, kind: str, sample: str = "") -> str:
    """``"<value> <kind>"`` (``"Gad1 imputed"``), with ``" · <sample>"`` when there are samples."""
    base = f"{value} {kind}".strip()
    return f"{base} · {sample}" if sample else base


def predicted_layer_name(cluster_key: str, sample: str = "") -> str:
    """Name of the most-likely-cluster layer of one sample."""
    return layer_name(f"most likely {cluster_key}", "", sample)


# --------------------------------------------------------------------------- sizes
def points_style(size: float, n_points: int = 0) -> dict[str, Any]:
    """Drawing options of every plugin Points layer.

    Without a border colour the antialiased rim of points only a pixel or two wide is napari's
    grey border, which washes colours out when zoomed out; a minimum on-screen size keeps the
    face visible; large layers (over 50,000 points) skip depth sorting to stay fast. Above
    :data:`LARGE_LAYER` points the minimum is 2 screen pixels and antialiasing is off: zoomed
    out, such points are smaller than a pixel anyway, and software OpenGL draws 10^6 of them
    about 3x faster (measured here: 8.1 s -> 2.7 s a frame).
    """
    large = n_points > LARGE_LAYER
    return {
        "size": float(size),
        "border_width": 0.0,
        "border_color": "transparent",
        "canvas_size_limits": (2 if large else 4, 10000),
        "antialiasing": 0.0 if large else 1.0,
        "blending": "translucent_no_depth" if n_points > 50_000 else "translucent",
    }


#: Points in a layer above which :func:`points_style` draws for speed.
LARGE_LAYER = 200_000


# --------------------------------------------------------------------------- features & colour
def features_frame(obs: pd.DataFrame) -> pd.DataFrame:
    """napari features from ``obs``: text columns as Categorical, a RangeIndex, cell names added."""
    df = obs.copy()
    for col in df.columns:
        s = df[col]
        if s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
            if not isinstance(s.dtype, pd.CategoricalDtype):
                df[col] = pd.Categorical(s.astype(str))
    df[CELL_COLUMN] = np.asarray(obs.index, dtype=object)
    df.columns = [str(c) for c in df.columns]
    return df.reset_index(drop=True)


def is_categorical(values: pd.Series) -> bool:
    """Whether a feature column is coloured by a colour cycle (not a colormap)."""
    return not (
        pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)
    )


def color_kwargs(
    features: pd.DataFrame,
    column: str | None,
    palette: Sequence[str] | None = None,
    colormap: str = "viridis",
) -> dict[str, Any]:
    """Keyword arguments of ``Points`` that colour points by a feature column.

    Categories get a colour cycle (a dict, stable per category, :func:`category_colors`);
    numbers get ``colormap`` with :func:`robust_limits`. ``None`` gives one plain colour.
    """
    if column is None or column not in features.columns:
        return {"face_color": "#b0b0b0"}
    values = features[column]
    if is_categorical(values):
        cats = (
            values.cat.categories
            if isinstance(values.dtype, pd.CategoricalDtype)
            else pd.unique(values)
        )
        return {"face_color": column, "face_color_cycle": category_colors(cats, palette)}
    return {
        "face_color": column,
        "face_colormap": colormap,
        "face_contrast_limits": robust_limits(values.to_numpy()),
    }


#: Percentiles of the contrast limits of every colour-mapped layer (the seed's ``perc=0.02``).
PERCENTILES: tuple[float, float] = (2.0, 98.0)


def robust_limits(
    vals: np.ndarray, percentiles: tuple[float, float] = PERCENTILES
) -> tuple[float, float]:
    """Contrast limits from percentiles of the finite values, always with ``hi > lo``."""
    v = np.asarray(vals, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    if v.size > 1_000_000:  # a regular subsample keeps this fast and deterministic
        v = v[np.linspace(0, v.size - 1, 1_000_000).astype(np.int64)]
    lo, hi = (float(x) for x in np.percentile(v, percentiles))
    if not hi > lo:
        lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        hi = lo + (abs(lo) * 1e-3 or 1.0)
    return lo, hi


def recolor(
    layer: Any,
    spec: PointsSpec | str,
    palette: Sequence[str] | None = None,
    colormap: str = "viridis",
    colorbar: bool = True,
) -> None:
    """Recolour an existing Points layer in place (same points, no new layer).

    ``spec`` is either a :class:`PointsSpec` of the same points (its values, colouring, name and
    metadata replace the layer's) or the name of one of the layer's feature columns (coloured
    with :func:`color_kwargs`; its ``color_by`` metadata follows). This changes ``face_color``
    only, so it stays fast for 200,000 points. Going from a colormap to categories the colour is
    first set to a constant: switching straight to a categorical column from colormap mode fails,
    and changing the mode first builds a cycle over every float value (minutes for large layers).
    """
    if isinstance(spec, str):
        column = spec
        kw = color_kwargs(layer.features, column, palette, colormap)
        md = plugin_meta(layer)
        if md:
            md["color_by"] = column
        spec = PointsSpec(
            layer.name,
            layer.data,
            layer.features,
            column if "face_color_cycle" in kw or "face_colormap" in kw else None,
            {**{k: v for k, v in kw.items() if k != "face_color"}, "metadata": None},
        )
        if spec.color_column is None:
            layer.face_color = kw["face_color"]
            return
    if len(layer.data) != len(spec.data):
        raise ValueError(
            f"layer {layer.name!r} has {len(layer.data)} points, the new values {len(spec.data)}."
        )
    if spec.features is not layer.features:
        # keep the current colour column (the old value, or a mask's) while switching
        old = layer.features
        bridge = spec.features.copy()
        for col in old.columns.difference(bridge.columns):
            bridge[col] = old[col].to_numpy()
        layer.features = bridge
    if "face_color_cycle" in spec.kwargs:
        layer.face_color = "#b0b0b0"
        layer.face_color_cycle = spec.kwargs["face_color_cycle"]
    layer.face_color = spec.color_column
    if spec.features is not layer.features:
        layer.features = spec.features
    if "face_colormap" in spec.kwargs:  # each setter recolours every point: only what changed
        cmap = spec.kwargs["face_colormap"]
        if not (isinstance(cmap, str) and getattr(layer.face_colormap, "name", None) == cmap):
            layer.face_colormap = cmap
        limits = tuple(float(v) for v in spec.kwargs["face_contrast_limits"])
        current = layer.face_contrast_limits
        if current is None or tuple(float(v) for v in current) != limits:
            layer.face_contrast_limits = limits
        if layer.face_colorbar.visible != colorbar:
            layer.face_colorbar.visible = colorbar
    if "translate" in spec.kwargs and not np.array_equal(layer.translate, spec.kwargs["translate"]):
        layer.translate = spec.kwargs["translate"]
    if spec.kwargs.get("metadata") is not None:
        layer.metadata = {**layer.metadata, META_KEY: dict(spec.meta)}
    layer.name = spec.name
    if not np.all(layer.shown):  # a mask hid cells of the old values
        layer.shown = np.ones(len(layer.data), dtype=bool)


# --------------------------------------------------------------------------- metadata
def plugin_meta(layer_or_metadata: Any) -> dict[str, Any]:
    """The plugin's metadata dict of a layer (or of a ``metadata`` mapping); ``{}`` for others.

    Every layer the plugin makes has one dict under ``metadata[META_KEY]``:

    ``kind``
        What the layer shows: ``"spatial"``, ``"reference"``, ``"predicted"`` (most likely
        cluster), ``"imputed"``, ``"measured"``, ``"probability"``, ``"interval"``,
        ``"previous result"`` (kept from an earlier result), ``"link_highlight"``, ``"labels"``,
        ``"paint"``.
    ``value``, ``sample``, ``rows``, ``level``
        The gene/cluster/colour column shown, the sample (``""``: all cells; the FOV of each
        point is a feature column), the int64 row of each point in its AnnData, the interval
        level (``"90"``).
    ``explore``
        ``True`` on the exploration layers (they follow a new result).
    ``adata``, ``role``
        On the layers of a whole data set only: the AnnData and its role (``"spatial"``,
        ``"result"``, ``"reference"``); see :func:`source_adata`. Also ``coords`` (the obsm
        key), ``fov_key``, ``sample_key`` (also on every layer drawn across samples: the samples
        laid out side by side in its coordinates), ``color_by``, ``cluster_key``, ``source`` (the file,
        :func:`source_of`) and ``origin`` (what made the layer).
    Widgets add their own entries (``mask``, ``previous``, ``highlight``, ``labels_id``...).
    """
    md = (
        layer_or_metadata
        if isinstance(layer_or_metadata, Mapping)
        else getattr(layer_or_metadata, "metadata", None)
    )
    if not isinstance(md, Mapping):
        return {}
    meta = md.get(META_KEY)
    return meta if isinstance(meta, dict) else {}


def set_meta(layer: Any, **entries: Any) -> None:
    """Update the plugin's metadata dict of ``layer`` (a new dict: napari sees the change);
    an entry set to ``None`` is removed."""
    md = {**plugin_meta(layer), **entries}
    layer.metadata = {
        **layer.metadata,
        META_KEY: {k: v for k, v in md.items() if v is not None or k not in entries},
    }


def make_meta(kind: str, **entries: Any) -> dict[str, Any]:
    """``{META_KEY: {"kind": kind, **entries}}``: the ``metadata`` of a new plugin layer."""
    return {META_KEY: {"kind": kind, **entries}}


def source_of(path: Any) -> str | None:
    """The file a data set was read from, as stored in layer metadata (``"source"``): the
    resolved path of a ``str``/``Path``, else ``None`` (data that did not come from a file)."""
    from pathlib import Path

    if not isinstance(path, str | Path) or not str(path):
        return None
    try:
        return str(Path(path).expanduser().resolve())
    except OSError:
        return str(path)


def source_adata(layer_or_metadata: Any) -> ad.AnnData | None:
    """The whole AnnData a plugin data-set layer holds (``"adata"``), or ``None``."""
    adata = plugin_meta(layer_or_metadata).get("adata")
    return adata if isinstance(adata, ad.AnnData) else None


def role_of(adata: ad.AnnData) -> str:
    """``"result"`` for a mapping result, ``"spatial"`` with ``obsm['spatial']``, else ``"reference"``."""
    if UNS_KEY in adata.uns:
        return "result"
    if "spatial" in adata.obsm:
        return "spatial"
    return "reference"


def result_cluster_key(adata: ad.AnnData) -> str | None:
    """The cluster key of a result AnnData (its ``<key>_predicted`` column), or ``None``."""
    info = adata.uns.get(UNS_KEY, {})
    key = info.get("cluster_key") if isinstance(info, Mapping) else None
    if key and f"{key}_predicted" in adata.obs.columns:
        return str(key)
    return None


# --------------------------------------------------------------------------- layer builders
def spatial_layers(
    adata: ad.AnnData,
    *,
    fov_key: str | None = None,
    sample_key: str | None = None,
    color_by: str | None = None,
    name: str | None = None,
    role: str | None = None,
    size: float | None = None,
    detect_fov: bool = True,
) -> list[LayerData]:
    """The Points layer-data tuple of a spatial (or result) AnnData: every sample in one layer.

    The FOV and the sample are feature columns (the AnnData's own ``obs`` columns, as every obs
    column); samples that share coordinates are laid out side by side in the layer's coordinates
    (:func:`section_spec`, :func:`~napari_spatial_impute.viz.sections.sample_offsets`; no
    ``translate``), which the writer takes off again.

    Parameters
    ----------
    adata
        Cells with ``obsm["spatial"]`` (2D or 3D).
    fov_key
        obs column with the FOV; ``None`` looks for a usual name (``fov``, ``slice``...).
    sample_key
        obs column with the sample; ``None`` looks for a usual name (``sample``, ``section``...),
        ``""`` means none.
    color_by
        obs column to colour by; for a result the predicted cluster is the default.
    name
        Layer name; ``None`` gives ``"spatial"``, or for a result with clusters
        ``"most likely <key>"``.
    role
        ``"spatial"`` or ``"result"``; guessed from ``adata`` when ``None``.
    size
        Point diameter in data units; ``None`` uses the median nearest-neighbour distance.
    detect_fov
        With ``fov_key=None``, look for a usual FOV column; ``False`` makes all cells one FOV.

    Returns
    -------
    A list of one layer-data tuple (a list, as napari readers return).
    """
    role = role or role_of(adata)
    if fov_key is None and role == "result":
        stored = adata.uns.get(UNS_KEY, {}).get("fov_key")
        fov_key = str(stored) if stored and stored in adata.obs.columns else None
    fov_key = find_fov_key(adata, fov_key) if (fov_key is not None or detect_fov) else None
    samples = resolve_sample_key(adata, sample_key, fov_key)
    key = result_cluster_key(adata) if role == "result" else None
    if color_by is None and key:
        color_by = f"{key}_predicted"
    if color_by is not None and color_by not in adata.obs.columns:
        raise ValueError(f"colour column {color_by!r} is not in obs.")
    coords = to_napari(
        checked_coords(adata, "spatial", "spatial data" if role == "spatial" else role)
    )
    if fov_key is not None:
        fov_labels(adata, fov_key)  # refuses a per-cell column before anything is built
    rows = section_rows(adata, samples)
    feats = features_frame(adata.obs)
    if not np.array_equal(rows, np.arange(adata.n_obs)):
        feats = feats.iloc[rows].reset_index(drop=True)
    if size is None and coords.shape[1] != 2:  # 3D: the spacing in space
        size = point_size(coords)
    spec = section_spec(
        adata,
        predicted_layer_name(key) if name is None and key else (name or "spatial"),
        feats,
        color_by,
        rows=rows,
        sample_key=samples,
        positions=coords[rows],
        kind=PREDICTED_ROLE if key else role,
        size=size,
        style=color_kwargs(feats, color_by, stored_palette(adata.uns, color_by)),
        value=key or color_by,
        adata=adata,
        role=role,
        coords="spatial",
        fov_key=fov_key,
        color_by=color_by,
    )
    return [spec.layer_data()]


def section_spec(
    adata: ad.AnnData,
    name: str,
    features: pd.DataFrame,
    column: str | None,
    /,
    *,
    rows: np.ndarray,
    sample_key: str | None,
    kind: str,
    positions: np.ndarray | None = None,
    size: float | None = None,
    style: Mapping[str, Any] | None = None,
    **meta: Any,
) -> PointsSpec:
    """One Points layer of the cells ``rows`` of any samples: the builder of every layer drawn
    across samples (the data sets' layers, :func:`spatial_layers`; the exploration layers,
    :func:`napari_spatial_impute.viz.explore.section_points_spec`).

    The points are drawn where :func:`~napari_spatial_impute.viz.sections.display_yx` puts the
    cells: each sample's side-by-side offset is added to the ``(y, x)`` of its cells (no
    ``translate``). The metadata dict gets ``rows``, ``sample`` (``""``: every sample is in the
    layer) and ``sample_key`` (the column whose layout is in the coordinates; the writer takes
    the offsets off with it).

    Parameters
    ----------
    adata
        The data set.
    name, features, column, kind, style, meta
        As :func:`points_spec` (``features``: one row per row of ``rows``).
    rows
        int64 rows of ``adata``, one per point (:func:`~napari_spatial_impute.viz.sections.section_rows`).
    sample_key
        The sample column (``None``: no samples, no offsets).
    positions
        napari coordinates of ``rows`` as stored (2D or 3D); default ``obsm["spatial"]``'s
        ``(y, x)`` (checked: NaN is an :class:`~napari_spatial_impute._errors.InputError`).
    size
        Point diameter; default the spacing where the cells are drawn (:func:`drawn_point_size`).
    """
    data = to_napari(adata, rows, ndim=2) if positions is None else np.array(positions, np.float64)
    data[:, -2:] += row_offsets(adata, rows, sample_key)
    size = drawn_point_size(adata, sample_key) if size is None else size
    return points_spec(
        name,
        data,
        features,
        column,
        kind=kind,
        size=size,
        style=style,
        **{"sample": "", "sample_key": sample_key, **meta},
        rows=rows,
    )


def points_spec(
    name: str,
    data: np.ndarray,
    features: pd.DataFrame,
    column: str | None,
    *,
    kind: str,
    size: float,
    style: Mapping[str, Any] | None = None,
    **meta: Any,
) -> PointsSpec:
    """The one builder of the plugin's Points layers: any rows of a data set, in one layer.

    Parameters
    ----------
    name
        Layer name.
    data
        napari coordinates of the points (the chosen rows only).
    features
        One row per point (the FOV, when several FOVs share a layer, is one of its columns).
    column
        Feature column that colours the points (``None``: the plain colour of ``style``).
    kind
        What the layer shows (``metadata[META_KEY]["kind"]``, see :func:`plugin_meta`).
    size
        Point diameter in data units.
    style
        Colour keywords (:func:`color_kwargs`, or a colormap with limits, or a colour cycle).
    meta
        The other entries of the layer's metadata dict (``rows``, ``fov``, ``value``...).
    """
    kwargs = points_style(size, len(data))
    style = dict(style or {})
    if column is None and "face_color" in style:
        kwargs["face_color"] = style.pop("face_color")
    style.pop("face_color", None)
    kwargs.update(style)
    kwargs["metadata"] = make_meta(kind, **meta)
    return PointsSpec(name, data, features, column, kwargs)


def reference_layer(
    adata: ad.AnnData,
    *,
    cluster_key: str | None = None,
    umap_key: str = "X_umap",
    beside: tuple[np.ndarray, np.ndarray] | None = None,
    name: str = "reference UMAP",
) -> LayerData:
    """A Points layer-data tuple of the reference cells at their UMAP, coloured by cluster.

    Parameters
    ----------
    adata
        Reference with ``obsm[umap_key]`` (see :func:`ensure_umap`).
    cluster_key
        obs column with clusters (colour), or ``None``.
    umap_key
        obsm key of the embedding.
    beside
        ``(min, max)`` napari-order bounds of the tissue; the UMAP is then scaled to the tissue's
        height and placed to its right, so both are visible together.
    name
        Layer name.
    """
    if umap_key not in adata.obsm:
        raise ValueError(f"the reference has no obsm[{umap_key!r}]; compute it with ensure_umap().")
    data = to_napari(checked_coords(adata, umap_key, "reference")[:, :2])
    feats = features_frame(adata.obs)
    scale, translate = (
        (np.ones(2), np.zeros(2)) if beside is None else beside_transform(data, beside)
    )
    spec = points_spec(
        name,
        data,
        feats,
        cluster_key,
        kind=REFERENCE_ROLE,
        size=2.0 * point_size(data),  # clusters are dense in a UMAP: bigger than the spacing
        style=color_kwargs(feats, cluster_key, stored_palette(adata.uns, cluster_key)),
        value=cluster_key,
        fov=None,
        rows=np.arange(adata.n_obs, dtype=np.int64),
        adata=adata,
        role="reference",
        coords=umap_key,
        fov_key=None,
        color_by=cluster_key,
        cluster_key=cluster_key,
    )
    spec.kwargs.update(scale=scale, translate=translate)
    return spec.layer_data()


def drawn_points(layer: Any) -> np.ndarray:
    """A Points layer's ``(y, x)`` where they are drawn: its data plus its ``translate``."""
    data = np.asarray(layer.data, dtype=np.float64)[:, -2:]
    return data + np.asarray(getattr(layer, "translate", np.zeros(2)), dtype=np.float64)[-2:]


def bounds_of(datas: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(min, max)`` over the last two axes of several point arrays (napari order)."""
    allpts = np.concatenate([np.asarray(d)[:, -2:] for d in datas], axis=0)
    return allpts.min(axis=0), allpts.max(axis=0)


def beside_transform(
    data: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], gap: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, translate)`` that fit 2D points to the tissue's height, right of the tissue."""
    lo, hi = (np.asarray(b, dtype=np.float64)[-2:] for b in bounds)
    dlo, dhi = data.min(axis=0), data.max(axis=0)
    dspan = np.maximum(dhi - dlo, 1e-9)
    height = max(float(hi[0] - lo[0]), float(hi[1] - lo[1]) * 0.5, 1e-9)
    s = height / float(dspan[0])
    scale = np.array([s, s])
    width = float(hi[1] - lo[1])
    translate = np.array([lo[0] - dlo[0] * s, hi[1] + gap * max(width, height) - dlo[1] * s])
    return scale, translate


def ensure_umap(adata: ad.AnnData, key: str = "X_umap", seed: int = 0) -> np.ndarray:
    """Return ``adata.obsm[key]``, computing a UMAP with scanpy when absent (stored in place).

    The expression is normalised and log-transformed on a copy (unless it already looks
    log-transformed); PCA, a kNN graph and UMAP follow. This takes seconds to minutes: run it in
    a worker thread from a GUI.
    """
    if key in adata.obsm:
        return np.asarray(adata.obsm[key])
    import scanpy as sc

    from napari_spatial_impute.io.files import describe_values

    tmp = ad.AnnData(X=_umap_input(adata.X), obs=pd.DataFrame(index=adata.obs_names.copy()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if describe_values(tmp.X) != "log-transformed":
            sc.pp.normalize_total(tmp)
            sc.pp.log1p(tmp)
        n_comps = int(min(50, tmp.n_vars - 1, tmp.n_obs - 1))
        sc.pp.pca(tmp, n_comps=max(n_comps, 2), random_state=seed)
        k = min(15, tmp.n_obs - 1)
        sc.pp.neighbors(tmp, n_neighbors=k, random_state=seed, transformer=_knn(tmp.n_obs, k, seed))
        sc.tl.umap(tmp, random_state=seed)
    adata.obsm[key] = np.asarray(tmp.obsm["X_umap"], dtype=np.float32)
    return adata.obsm[key]


def _umap_input(X: Any) -> Any:
    """A float32 copy of ``X`` that scanpy takes: a ``csr_matrix`` for any sparse matrix or array
    (scanpy 1.11 fails on scipy's ``csr_array``: no ``getnnz``), else a dense array (a lazy
    matrix is read here)."""
    import scipy.sparse as sp

    if sp.issparse(X):
        sparse: Any = X  # any scipy sparse matrix or array
        return sp.csr_matrix(sparse, dtype=np.float32, copy=True)
    return np.array(X, dtype=np.float32, copy=True)


#: Below this many cells the UMAP's neighbours are searched exactly (scanpy's threshold).
EXACT_KNN_CELLS = 4096


class _CsrMatrixGraph:
    """A kNN transformer (scikit-learn's interface) whose graph is a ``csr_matrix``: scanpy 1.11
    reads the graph with ``getnnz``, which the ``csr_array`` pynndescent and scikit-learn return
    with scipy 1.17 lacks ("'csr_array' object has no attribute 'getnnz'")."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return dict(self.inner.get_params(deep))

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        import scipy.sparse as sp

        return sp.csr_matrix(self.inner.fit_transform(X))


def _knn(n_obs: int, k: int, seed: int) -> _CsrMatrixGraph:
    """scanpy's own choice of kNN search (exact below :data:`EXACT_KNN_CELLS` cells, else
    pynndescent with UMAP's defaults), its graph as a ``csr_matrix``."""
    if n_obs < EXACT_KNN_CELLS:
        from sklearn.neighbors import KNeighborsTransformer  # type: ignore[import-untyped]

        return _CsrMatrixGraph(KNeighborsTransformer(n_neighbors=k, algorithm="brute"))
    from pynndescent import PyNNDescentTransformer  # type: ignore[import-untyped]

    return _CsrMatrixGraph(
        PyNNDescentTransformer(
            n_neighbors=k,
            random_state=seed,
            n_trees=min(64, 5 + round(n_obs**0.5 / 20.0)),
            n_iters=max(5, round(float(np.log2(n_obs)))),
        )
    )


def adata_layers(
    adata: ad.AnnData, *, name: str = "data", cluster_key: str | None = None
) -> list[LayerData]:
    """Layers for any plugin AnnData: spatial/result cells (one layer, every sample in it), or a
    reference at its UMAP.

    A reference without ``obsm['X_umap']`` gives no layers (computing one is too slow here).
    """
    role = role_of(adata)
    if role == "result":
        return spatial_layers(adata, name=None if result_cluster_key(adata) else name, role=role)
    if role == "spatial":
        return spatial_layers(adata, name=name, role=role)
    if "X_umap" in adata.obsm:
        return [
            reference_layer(adata, cluster_key=cluster_key or guess_cluster_key(adata), name=name)
        ]
    return []


def guess_cluster_key(adata: ad.AnnData) -> str | None:
    """A likely cluster column: the first of common names, else the first categorical column."""
    for name in (
        "cell_type",
        "celltype",
        "cell_types",
        "cluster",
        "clusters",
        "leiden",
        "louvain",
        "subclass",
        "class",
    ):
        if name in adata.obs.columns:
            return name
    for col in adata.obs.columns:
        if (
            isinstance(adata.obs[col].dtype, pd.CategoricalDtype)
            and 1 < adata.obs[col].nunique() < 200
        ):
            return str(col)
    return None
