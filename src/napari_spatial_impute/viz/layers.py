"""Build napari layer-data tuples from AnnData and back (pure: no Qt, no viewer needed).

Conventions
-----------
* ``obsm["spatial"]`` holds ``(x, y)`` or ``(x, y, z)`` per cell, as written by scanpy/squidpy.
  napari orders axes from slowest to fastest, so a layer's data is the reversed columns:
  ``(y, x)`` or ``(z, y, x)``. :func:`to_napari` and :func:`from_napari` convert.
* One Points layer per field of view (FOV); its ``features`` are the FOV's ``obs`` columns
  (text columns become pandas Categorical) plus :data:`CELL_COLUMN`, the cell name, which keeps
  points tied to their cells when points are deleted.
* ``layer.metadata[META_KEY]`` is a dict (see :func:`plugin_meta`) holding the whole source
  AnnData (``"adata"``), the ``"role"`` (``"spatial"``, ``"result"`` or ``"reference"``),
  ``"coords"`` (the obsm key the points come from), ``"fov_key"`` and ``"fov"``; the reader and
  the widgets add ``"source"`` (the file, :func:`source_of`) and ``"origin"`` (what made the
  layer). Other widgets read imputed genes from that AnnData; the writer saves it back with
  nothing lost. The plugin finds its layers by this metadata, never by their names (napari
  renames a layer whose name is taken, and the user may rename any layer).
* The exploration keys of :mod:`napari_spatial_impute.viz.explore` are set too (``nsi_role`` =
  ``"spatial"``, ``"predicted"`` or ``"reference"``, ``nsi_fov``, ``nsi_value``, ``nsi_rows``),
  so result and reference layers take part in linked selections. A result's layers are named
  like the Explore widget's most-likely-cluster layers (``"most likely <key> · FOV <id>"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute.io.files import find_fov_key, fov_labels
from napari_spatial_impute.io.schema import UNS_KEY
from napari_spatial_impute.viz.explore import (
    FOV_KEY,
    PREDICTED_ROLE,
    REFERENCE_ROLE,
    ROLE_KEY,
    ROWS_KEY,
    VALUE_KEY,
    checked_coords,
    predicted_layer_name,
)

#: Key of the plugin's entry in ``layer.metadata``.
META_KEY = "spatial_impute"
#: Feature column holding each point's cell name (``obs_names``).
CELL_COLUMN = "obs_name"

LayerData = tuple[Any, dict[str, Any], str]

#: Drawing options of every plugin Points layer. Without a border colour the antialiased rim of
#: points only a pixel or two wide is napari's grey border, which washes colours out when zoomed
#: out; a minimum on-screen size keeps the face visible.
POINT_STYLE: dict[str, Any] = {
    "border_width": 0,
    "border_color": "transparent",
    "canvas_size_limits": (4, 10000),
}

ROLES = ("spatial", "result", "reference")


# --------------------------------------------------------------------------- coordinates
def to_napari(coords: Any) -> np.ndarray:
    """``(x, y[, z])`` coordinates to napari's ``(y, x)`` / ``(z, y, x)`` order (float64)."""
    arr = np.asarray(coords.to_numpy() if isinstance(coords, pd.DataFrame) else coords)
    return np.ascontiguousarray(arr[:, ::-1], dtype=np.float64)


def from_napari(data: np.ndarray) -> np.ndarray:
    """napari ``(y, x)`` / ``(z, y, x)`` points back to ``(x, y[, z])``."""
    return np.ascontiguousarray(np.asarray(data)[:, ::-1])


def point_size(data: np.ndarray) -> float:
    """A point diameter that makes neighbouring cells just touch (median nearest-neighbour distance)."""
    from scipy.spatial import cKDTree

    pts = np.asarray(data, dtype=np.float64)[:, -2:]
    pts = pts[np.isfinite(pts).all(axis=1)]  # callers report non-finite cells themselves
    if len(pts) < 2:
        return 1.0
    sample = pts if len(pts) <= 20_000 else pts[np.linspace(0, len(pts) - 1, 20_000).astype(int)]
    dist, _ = cKDTree(pts).query(sample, k=2)
    d = dist[:, 1]
    d = d[d > 0]
    if d.size == 0:
        span = float(np.ptp(pts, axis=0).max()) or 1.0
        return span / 100.0
    return float(np.median(d)) * 0.9


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


def category_colors(
    categories: Sequence[Any], palette: Sequence[str] | None = None
) -> dict[Any, str]:
    """A ``{category: '#rrggbb'}`` map (scanpy's ``uns['<key>_colors']`` when given, else tab20)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cats = list(categories)
    if palette is not None and len(palette) >= len(cats):
        return {c: to_hex(palette[i]) for i, c in enumerate(cats)}
    if len(cats) <= 10:
        base = [to_hex(c) for c in colormaps["tab10"].colors]
    elif len(cats) <= 20:
        base = [to_hex(c) for c in colormaps["tab20"].colors]
    else:
        cmap = colormaps["gist_ncar"]
        base = [to_hex(cmap(x)) for x in np.linspace(0.05, 0.95, len(cats))]
    return {c: base[i % len(base)] for i, c in enumerate(cats)}


def color_kwargs(
    features: pd.DataFrame,
    column: str | None,
    palette: Sequence[str] | None = None,
    colormap: str = "viridis",
) -> dict[str, Any]:
    """Keyword arguments of ``Points`` that colour points by a feature column.

    Categories get a colour cycle (a dict, stable per category); numbers get ``colormap`` with
    contrast limits at the 1st and 99th percentiles. ``None`` gives one plain colour.
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
        "face_contrast_limits": contrast_limits(values.to_numpy()),
    }


def contrast_limits(values: np.ndarray) -> tuple[float, float]:
    """1st-99th percentile of the finite values (a non-empty range)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(x) for x in np.percentile(v, [1, 99]))
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + 1.0
    return (lo, hi)


def recolor(
    layer: Any, column: str, palette: Sequence[str] | None = None, colormap: str = "viridis"
) -> None:
    """Colour an existing Points layer by one of its feature columns, in place.

    This changes ``face_color`` only (no new layer), so it stays fast for 200,000 points. To go
    from a colormap to categories the colour is first set to a constant: switching straight to a
    categorical column from colormap mode fails, and changing the mode first builds a cycle over
    every float value (minutes for large layers).
    """
    kw = color_kwargs(layer.features, column, palette, colormap)
    if "face_color_cycle" in kw:
        layer.face_color = "#b0b0b0"
        layer.face_color_cycle = kw["face_color_cycle"]
        layer.face_color = column
    elif "face_colormap" in kw:
        layer.face_color = column
        layer.face_colormap = kw["face_colormap"]
        layer.face_contrast_limits = kw["face_contrast_limits"]
    else:
        layer.face_color = kw["face_color"]
    meta = plugin_meta(layer)
    if meta is not None:
        meta["color_by"] = column


# --------------------------------------------------------------------------- metadata
def plugin_meta(layer_or_metadata: Any) -> dict[str, Any] | None:
    """The plugin's metadata dict of a layer (or of a ``metadata`` mapping), or ``None``."""
    md = (
        layer_or_metadata
        if isinstance(layer_or_metadata, Mapping)
        else getattr(layer_or_metadata, "metadata", None)
    )
    if not isinstance(md, Mapping):
        return None
    meta = md.get(META_KEY)
    if isinstance(meta, dict) and isinstance(meta.get("adata"), ad.AnnData):
        return meta
    return None


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
    """The whole AnnData a plugin layer was built from, or ``None``."""
    meta = plugin_meta(layer_or_metadata)
    return None if meta is None else meta["adata"]


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


def _palette(adata: ad.AnnData, column: str | None) -> list[str] | None:
    if column is None:
        return None
    for key in (f"{column}_colors", f"{column.removesuffix('_predicted')}_colors"):
        pal = adata.uns.get(key)
        if pal is not None:
            return [str(c) for c in np.asarray(pal).ravel()]
    return None


# --------------------------------------------------------------------------- layer builders
def spatial_layers(
    adata: ad.AnnData,
    *,
    fov_key: str | None = None,
    color_by: str | None = None,
    name: str | None = None,
    role: str | None = None,
    size: float | None = None,
    detect_fov: bool = True,
) -> list[LayerData]:
    """One Points layer-data tuple per FOV of a spatial (or result) AnnData.

    Parameters
    ----------
    adata
        Cells with ``obsm["spatial"]`` (2D or 3D).
    fov_key
        obs column with the FOV; ``None`` looks for a usual name (``fov``, ``slice``...).
    color_by
        obs column to colour by; for a result the predicted cluster is the default.
    name
        Layer name (``"<name> [<fov>]"`` when there are several FOVs); ``None`` gives
        ``"spatial"``, or for a result with clusters ``"most likely <key> · FOV <id>"``.
    role
        ``"spatial"`` or ``"result"``; guessed from ``adata`` when ``None``.
    size
        Point diameter in data units; ``None`` uses the median nearest-neighbour distance.
    detect_fov
        With ``fov_key=None``, look for a usual FOV column; ``False`` makes all cells one FOV.
    """
    role = role or role_of(adata)
    if fov_key is None and role == "result":
        stored = adata.uns.get(UNS_KEY, {}).get("fov_key")
        fov_key = str(stored) if stored and stored in adata.obs.columns else None
    fov_key = find_fov_key(adata, fov_key) if (fov_key is not None or detect_fov) else None
    key = result_cluster_key(adata) if role == "result" else None
    if color_by is None and key:
        color_by = f"{key}_predicted"
    if color_by is not None and color_by not in adata.obs.columns:
        raise ValueError(f"colour column {color_by!r} is not in obs.")
    coords = to_napari(
        checked_coords(adata, "spatial", "spatial data" if role == "spatial" else role)
    )
    feats = features_frame(adata.obs)
    pal = _palette(adata, color_by)
    if size is None:
        size = point_size(coords)
    labels = fov_labels(adata, fov_key)
    out: list[LayerData] = []
    for fov in labels.categories:
        idx = np.flatnonzero(np.asarray(labels == fov))
        if idx.size == 0:
            continue
        f = feats.iloc[idx].reset_index(drop=True)
        if name is None and key:
            lname = predicted_layer_name(key, str(fov))
        else:
            base = name or "spatial"
            lname = base if len(labels.categories) == 1 else f"{base} · FOV {fov}"
        kwargs: dict[str, Any] = {
            "name": lname,
            "features": f,
            "size": size,
            **POINT_STYLE,
            "metadata": {
                META_KEY: {
                    "adata": adata,
                    "role": role,
                    "coords": "spatial",
                    "fov_key": fov_key,
                    "fov": str(fov),
                    "color_by": color_by,
                },
                ROLE_KEY: PREDICTED_ROLE if key else role,
                FOV_KEY: str(fov),
                VALUE_KEY: key or color_by,
                ROWS_KEY: idx.astype(np.int64),
            },
        }
        kwargs.update(color_kwargs(f, color_by, pal))
        out.append((coords[idx], kwargs, "points"))
    return out


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
    kwargs: dict[str, Any] = {
        "name": name,
        "features": feats,
        "size": 2.0 * point_size(data),  # clusters are dense in a UMAP: bigger than the spacing
        **POINT_STYLE,
        "scale": scale,
        "translate": translate,
        "metadata": {
            META_KEY: {
                "adata": adata,
                "role": "reference",
                "coords": umap_key,
                "fov_key": None,
                "fov": None,
                "color_by": cluster_key,
                "cluster_key": cluster_key,
            },
            ROLE_KEY: REFERENCE_ROLE,
            VALUE_KEY: cluster_key,
            ROWS_KEY: np.arange(adata.n_obs, dtype=np.int64),
        },
    }
    kwargs.update(color_kwargs(feats, cluster_key, _palette(adata, cluster_key)))
    return (data, kwargs, "points")


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

    tmp = ad.AnnData(X=adata.X.copy(), obs=pd.DataFrame(index=adata.obs_names.copy()))
    tmp.X = tmp.X.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if describe_values(tmp.X) != "log-transformed":
            sc.pp.normalize_total(tmp)
            sc.pp.log1p(tmp)
        n_comps = int(min(50, tmp.n_vars - 1, tmp.n_obs - 1))
        sc.pp.pca(tmp, n_comps=max(n_comps, 2), random_state=seed)
        sc.pp.neighbors(tmp, n_neighbors=min(15, tmp.n_obs - 1), random_state=seed)
        sc.tl.umap(tmp, random_state=seed)
    adata.obsm[key] = np.asarray(tmp.obsm["X_umap"], dtype=np.float32)
    return adata.obsm[key]


def adata_layers(
    adata: ad.AnnData, *, name: str = "data", cluster_key: str | None = None
) -> list[LayerData]:
    """Layers for any plugin AnnData: spatial/result cells per FOV, or a reference at its UMAP.

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
