"""napari writer: the plugin's Points layers back to one ``.h5ad`` file, with nothing lost."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute.io.files import write_h5ad_atomic
from napari_spatial_impute.viz.coords import from_napari
from napari_spatial_impute.viz.layers import CELL_COLUMN, plugin_meta, source_adata


def write_points_h5ad(
    path: str, layer_data: Sequence[tuple[Any, dict[str, Any], str]]
) -> list[str]:
    """Write Points layers to ``path`` (``.h5ad`` appended when missing).

    Sample layers of one data set are concatenated back into their source AnnData (coordinates and
    features from the layers; imputed values, probabilities and parameters from the source); plain
    Points layers become cells with no genes. See
    :func:`layers_to_anndata`.

    Returns
    -------
    The paths written (one).
    """
    target = Path(path)
    if target.suffix.lower() != ".h5ad":
        target = target.with_name(target.name + ".h5ad")
    adata = layers_to_anndata(list(layer_data))
    return [str(write_h5ad_atomic(adata, target))]


def layers_to_anndata(layer_data: Sequence[tuple[Any, Mapping[str, Any], str]]) -> ad.AnnData:
    """One AnnData from Points layer data (``(data, meta, 'points')`` tuples, as napari writers get).

    Plugin layers of one source AnnData are concatenated back into it: the cells still present
    (by :data:`CELL_COLUMN`) in the source's order, with their coordinates and feature columns
    written back (edited or new columns included); imputed values, probabilities and parameters
    come from the source untouched. Plain Points layers become cells with no genes: ``obs`` =
    features, ``obsm['spatial']`` = coordinates.

    Raises
    ------
    ValueError
        When the layers come from different data sets, or none is a Points layer.
    """
    pts = [(d, m, t) for d, m, t in layer_data if t == "points"]
    if not pts:
        raise ValueError("nothing to save: select one or more Points layers.")
    sources = {
        id(a): a for a in (source_adata(m.get("metadata", {})) for _, m, _ in pts) if a is not None
    }
    plain = [p for p in pts if source_adata(p[1].get("metadata", {})) is None]
    if len(sources) > 1 or (sources and plain):
        raise ValueError(
            "the selected layers come from different data sets; save each data set's layers separately."
        )
    if not sources:
        return _plain_points_to_anndata(plain)
    src = next(iter(sources.values()))
    return _plugin_points_to_anndata(src, pts)


def _plain_points_to_anndata(pts: Sequence[tuple[Any, Mapping[str, Any], str]]) -> ad.AnnData:
    coords = np.concatenate([from_napari(d) for d, _, _ in pts], axis=0)
    frames: list[pd.DataFrame] = []
    for d, m, _ in pts:
        features = m.get("features")
        if features is None:
            features = pd.DataFrame(index=range(len(d)))
        frames.append(features.assign(layer=str(m.get("name", "points"))))
    feats = pd.concat(frames, ignore_index=True)
    feats.index = pd.Index([str(i) for i in range(len(feats))])
    out = ad.AnnData(X=np.zeros((len(feats), 0), dtype=np.float32), obs=feats)
    out.obsm["spatial"] = coords
    return out


def _plugin_points_to_anndata(
    src: ad.AnnData, pts: Sequence[tuple[Any, Mapping[str, Any], str]]
) -> ad.AnnData:
    names: list[np.ndarray] = []
    coords: list[np.ndarray] = []
    frames: list[pd.DataFrame] = []
    coord_key = "spatial"
    for data, meta, _ in pts:
        pm = plugin_meta(meta.get("metadata", {}))
        assert pm is not None
        coord_key = pm.get("coords", "spatial")
        feats = meta.get("features")
        if feats is None or CELL_COLUMN not in feats.columns:
            raise ValueError(
                f"layer {meta.get('name')!r} lost its {CELL_COLUMN!r} column; cannot match points to cells."
            )
        keep = feats[CELL_COLUMN].notna().to_numpy()
        if not keep.all():
            warnings.warn(
                f"{int((~keep).sum())} points added by hand in {meta.get('name')!r} are not cells and are not saved.",
                stacklevel=3,
            )
        names.append(feats[CELL_COLUMN].to_numpy()[keep].astype(str))
        coords.append(from_napari(np.asarray(data)[keep]))
        frames.append(feats.loc[keep].drop(columns=[CELL_COLUMN]))
    all_names = np.concatenate(names)
    pos = src.obs_names.get_indexer(all_names)
    if (pos < 0).any():
        bad = all_names[pos < 0][:3].tolist()
        raise ValueError(f"cells {bad} are not in the layer's data set; cannot save them.")
    if len(np.unique(pos)) != len(pos):
        raise ValueError(
            "some cells are in several of the selected layers; select each sample once."
        )
    order = np.argsort(pos, kind="stable")
    keep = np.sort(pos)
    out = src.copy() if np.array_equal(keep, np.arange(src.n_obs)) else src[keep].copy()
    for col in src.obs.columns:  # subsetting drops unused categories: keep the source's
        if isinstance(src.obs[col].dtype, pd.CategoricalDtype):
            out.obs[col] = out.obs[col].cat.set_categories(src.obs[col].cat.categories)
    xy = np.concatenate(coords, axis=0)[order]
    old = np.asarray(out.obsm[coord_key])
    out.obsm[coord_key] = xy.astype(old.dtype, copy=False) if old.shape[1] == xy.shape[1] else xy
    feats = pd.concat(frames, ignore_index=True).iloc[order].reset_index(drop=True)
    for col in feats.columns:
        new = _writable(feats[col])
        if col in out.obs.columns and _same_values(out.obs[col].to_numpy(), new.to_numpy()):
            continue
        out.obs[col] = (
            new.to_numpy()
            if not isinstance(new.dtype, pd.CategoricalDtype)
            else pd.Categorical(new)
        )
    return out


def _writable(values: pd.Series) -> pd.Series:
    """A column h5ad can store: mixed objects (e.g. a column only some layers have) become text categories."""
    if values.dtype != object:
        return values
    inferred = values.infer_objects()
    if inferred.dtype != object:
        return inferred
    return pd.Series(
        pd.Categorical(values.where(values.isna(), values.astype(str))), index=values.index
    )


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    try:
        return bool(
            pd.Series(a)
            .astype(object)
            .reset_index(drop=True)
            .equals(pd.Series(b).astype(object).reset_index(drop=True))
        )
    except Exception:
        return False
