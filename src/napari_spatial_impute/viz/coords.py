"""Cell coordinates in napari's axis order (pure: no Qt, no viewer).

``obsm["spatial"]`` holds ``(x, y)`` or ``(x, y, z)`` per cell, as written by scanpy/squidpy;
napari orders axes from slowest to fastest, so a layer's data is the reversed columns.
"""

from __future__ import annotations

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
