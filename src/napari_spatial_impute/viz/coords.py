"""Cell coordinates in napari's axis order (pure: no Qt, no viewer).

``obsm["spatial"]`` holds ``(x, y)`` or ``(x, y, z)`` per cell, as written by scanpy/squidpy;
napari orders axes from slowest to fastest, so a layer's data is the reversed columns.
"""

from __future__ import annotations

import weakref
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputError


def checked_coords(adata: ad.AnnData, key: str = "spatial", what: str | None = None) -> np.ndarray:
    """``adata.obsm[key]`` as a float64 array, or an :class:`InputError` naming the bad cells.

    NaN or infinite coordinates would otherwise fail deep inside scipy's KD-tree or napari with
    a bare ``ValueError``; the message says how many cells, which ones, and how to drop them.
    """
    what = what or ("UMAP" if key == "X_umap" else "data")
    raw = adata.obsm[key]
    raw = raw.to_numpy() if isinstance(raw, pd.DataFrame) else np.asarray(raw)
    try:
        xy = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"obsm[{key!r}] holds {raw.dtype} values, not numbers; store numeric cell coordinates."
        ) from None
    if xy.ndim != 2 or xy.shape[0] != adata.n_obs or xy.shape[1] < 2:
        raise InputError(
            f"obsm[{key!r}] has shape {xy.shape}; it must be (n_cells, 2) or (n_cells, 3)."
        )
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        names = ", ".join(repr(str(n)) for n in adata.obs_names[bad][:3])
        raise InputError(
            f"{int(bad.sum()):,} of {adata.n_obs:,} cells of the {what} have NaN or infinite "
            f"coordinates in obsm[{key!r}] (first: {names}); drop or fix those cells, e.g. "
            f"adata = adata[np.isfinite(adata.obsm[{key!r}]).all(axis=1)].copy()."
        )
    return xy


def to_napari(
    coords: Any, rows: np.ndarray | None = None, *, ndim: int | None = None
) -> np.ndarray:
    """``(x, y[, z])`` coordinates in napari's ``(y, x)`` / ``(z, y, x)`` order (float64).

    ``coords`` is an array/DataFrame, or an AnnData whose ``obsm["spatial"]`` is checked with
    :func:`checked_coords` (NaN or infinite coordinates are an :class:`InputError`). ``rows``
    picks cells; ``ndim=2`` keeps the first two coordinates only (``(y, x)``).
    """
    if isinstance(coords, ad.AnnData):
        arr = checked_coords(coords)
    else:
        arr = np.asarray(coords.to_numpy() if isinstance(coords, pd.DataFrame) else coords)
    if ndim is not None:
        arr = arr[:, :ndim]
    if rows is not None:
        arr = arr[rows]
    return np.ascontiguousarray(arr[:, ::-1], dtype=np.float64)


def from_napari(data: np.ndarray) -> np.ndarray:
    """napari ``(y, x)`` / ``(z, y, x)`` points back to ``(x, y[, z])``."""
    return np.ascontiguousarray(np.asarray(data)[:, ::-1])


_SIZE_CACHE: dict[int, tuple[weakref.ref, float]] = {}


def point_size(data: Any) -> float:
    """A point diameter that makes neighbouring cells just touch (median nearest-neighbour
    distance x 0.9), from napari-order points or an AnnData's ``obsm["spatial"]`` (cached per
    AnnData). Non-finite points are left out (building layers reports them)."""
    if isinstance(data, ad.AnnData):
        hit = _SIZE_CACHE.get(id(data))
        if hit is not None and hit[0]() is data:
            return hit[1]
        raw = data.obsm["spatial"]
        raw = raw.to_numpy() if isinstance(raw, pd.DataFrame) else np.asarray(raw)
        try:
            pts = np.asarray(raw, dtype=np.float64)[:, 1::-1]
        except (TypeError, ValueError, IndexError):
            return 1.0
        size = point_size(pts)
        for k in [k for k, (ref, _) in _SIZE_CACHE.items() if ref() is None]:
            _SIZE_CACHE.pop(k, None)
        _SIZE_CACHE[id(data)] = (weakref.ref(data), size)
        return size
    from scipy.spatial import cKDTree

    pts = np.asarray(data, dtype=np.float64)[:, -2:]
    pts = pts[np.isfinite(pts).all(axis=1)]  # callers report non-finite cells themselves
    if len(pts) < 2:
        return 1.0
    sample = pts if len(pts) <= 20_000 else pts[np.linspace(0, len(pts) - 1, 20_000).astype(int)]
    dist, _ = cKDTree(pts).query(sample, k=2)
    d = np.asarray(dist)[:, 1]  # k=2 always gives an (n, 2) array; the stubs allow a float
    d = d[d > 0]
    if d.size == 0:
        span = float(np.ptp(pts, axis=0).max()) or 1.0
        return span / 100.0
    return float(np.median(d)) * 0.9
