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
from napari_spatial_impute.plugin.sync import open_results
from napari_spatial_impute.viz.coords import from_napari, to_napari
from napari_spatial_impute.viz.layers import (
    CELL_COLUMN,
    PREDICTED_ROLE,
    plugin_meta,
    source_adata,
)
from napari_spatial_impute.viz.sections import row_offsets


def write_points_h5ad(
    path: str, layer_data: Sequence[tuple[Any, dict[str, Any], str]]
) -> list[str]:
    """Write Points layers to ``path`` (``.h5ad`` appended when missing).

    Any of the plugin's layers of one data set (a result's layer from the reader or the Map widget,
    the Explore widget's imputed, measured, interval, probability or most likely cluster layers,
    the spatial data's or the reference's) save the whole data set: coordinates and features from
    the layers that hold it; every gene, interval, probability and parameter from the data set
    (a lazy one written block by block); plain Points layers become cells with no genes. See
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


#: ``kind`` of the layers that show one value of a result (the Explore widget's: a gene, a cluster's
#: probability, an interval width, the most likely cluster) and do not hold the result themselves.
VALUE_KINDS = frozenset({"imputed", "measured", "interval", "probability", PREDICTED_ROLE})


def layers_to_anndata(layer_data: Sequence[tuple[Any, Mapping[str, Any], str]]) -> ad.AnnData:
    """One AnnData from Points layer data (``(data, meta, 'points')`` tuples, as napari writers get).

    Plugin layers of one data set are saved as that data set, whole: every gene, ``obsm``,
    ``uns``, interval layers. A layer holding the data set (the reader's, Load's and Map's layers)
    writes its coordinates and feature columns back (edited or new columns included); a layer
    showing one value of a result (the Explore widget's imputed, measured, interval width,
    probability, most likely cluster layers) saves the result it shows (the open result of the
    viewer), its shown values being read from it. The cells saved are those in the layers (by
    :data:`CELL_COLUMN`), in the data set's order. Plain Points layers become cells with no genes:
    ``obs`` = features, ``obsm['spatial']`` = coordinates.

    Raises
    ------
    ValueError
        When the layers come from different data sets, or none is a Points layer.
    """
    pts = [(d, m, t) for d, m, t in layer_data if t == "points"]
    if not pts:
        raise ValueError("nothing to save: select one or more Points layers.")
    found = [_data_set_of(m) for _, m, _ in pts]
    sources = {id(a): a for a, _ in found if a is not None}
    if len(sources) > 1 or (sources and any(a is None for a, _ in found)):
        raise ValueError(
            "the selected layers come from different data sets; save each data set's layers separately."
        )
    if not sources:
        return _plain_points_to_anndata(pts)
    src = next(iter(sources.values()))
    holding = [p for p, (_, holds) in zip(pts, found, strict=True) if holds]
    showing = [p for p, (_, holds) in zip(pts, found, strict=True) if not holds]
    return _plugin_points_to_anndata(src, holding, showing)


def _data_set_of(meta: Mapping[str, Any]) -> tuple[ad.AnnData | None, bool]:
    """``(data set, holds it)`` of a layer: its own AnnData (``True``), the open result a value
    layer shows (``False``), or ``None`` for a plain layer (or a previous result's, which is
    saved as plain points with a warning)."""
    md = meta.get("metadata", {})
    own = source_adata(md)
    if own is not None:
        return own, True
    pm = plugin_meta(md)
    if pm.get("kind") in VALUE_KINDS:
        names = _cell_names(meta)
        for result in open_results():
            if _cells_in(result, names, pm.get("rows")):
                return result, False
        raise ValueError(
            f"layer {meta.get('name')!r} shows a result that is no longer open; show it again "
            "from the open result (Explore) or open the result file to save it."
        )
    if pm:
        warnings.warn(
            f"layer {meta.get('name')!r} ({pm.get('kind')}) holds no data set: saved as points "
            "with their feature columns, no genes.",
            stacklevel=3,
        )
    return None, False


def _cell_names(meta: Mapping[str, Any]) -> np.ndarray | None:
    feats = meta.get("features")
    if feats is None or CELL_COLUMN not in feats.columns:
        return None
    return feats[CELL_COLUMN].dropna().to_numpy().astype(str)


def _cells_in(result: ad.AnnData, names: np.ndarray | None, rows: Any) -> bool:
    """Whether a value layer's cells (by name, else by ``rows``) are cells of ``result``."""
    if names is not None:
        return bool((result.obs_names.get_indexer(names) >= 0).all())
    if rows is None:
        return False
    r = np.asarray(rows)
    return r.size == 0 or (int(r.min()) >= 0 and int(r.max()) < result.n_obs)


def _rows_of(src: ad.AnnData, meta: Mapping[str, Any]) -> np.ndarray:
    """Rows of ``src`` shown by a value layer (its :data:`CELL_COLUMN`, else its ``rows``)."""
    names = _cell_names(meta)
    if names is not None:
        return src.obs_names.get_indexer(names)
    return np.asarray(plugin_meta(meta.get("metadata", {})).get("rows"), dtype=np.int64)


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
    src: ad.AnnData,
    holding: Sequence[tuple[Any, Mapping[str, Any], str]],
    showing: Sequence[tuple[Any, Mapping[str, Any], str]] = (),
) -> ad.AnnData:
    names: list[np.ndarray] = [np.zeros(0, dtype=str)]
    coords: list[np.ndarray] = []
    moved: list[np.ndarray] = []
    frames: list[pd.DataFrame] = []
    coord_key = "spatial"
    for data, meta, _ in holding:
        pm = plugin_meta(meta.get("metadata", {}))
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
        xy, by_user = _file_coords(src, np.asarray(data)[keep], names[-1], pm, coord_key)
        coords.append(xy)
        moved.append(by_user)
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
    shown = [_rows_of(src, meta) for _, meta, _ in showing]
    keep = np.unique(np.concatenate([pos.astype(np.int64), *shown]))
    out = _subset(src, keep)
    if not holding:
        return out
    order = np.argsort(pos, kind="stable")
    at = np.searchsorted(keep, pos[order])  # the row of out of each held point, in that order
    xy = np.concatenate(coords, axis=0)[order]
    by_user = np.concatenate(moved)[order]
    old = np.asarray(out.obsm[coord_key])
    if old.shape[1] == xy.shape[1]:  # cells left where they were keep their stored coordinates
        new_xy = old.copy()
        new_xy[at[by_user]] = xy[by_user].astype(old.dtype, copy=False)
    else:
        new_xy = xy
    out.obsm[coord_key] = new_xy
    feats = pd.concat(frames, ignore_index=True).iloc[order].reset_index(drop=True)
    everyone = len(at) == out.n_obs
    for col in feats.columns:
        new = _writable(feats[col])
        if not everyone:  # cells of value layers only keep their values (or get none)
            full = (
                out.obs[col].to_numpy(dtype=object).copy()
                if col in out.obs.columns
                else np.full(out.n_obs, np.nan, dtype=object)
            )
            full[at] = new.to_numpy(dtype=object)
            new = _writable(pd.Series(full))
        if col in out.obs.columns and _same_values(out.obs[col].to_numpy(), new.to_numpy()):
            continue
        out.obs[col] = (
            new.to_numpy()
            if not isinstance(new.dtype, pd.CategoricalDtype)
            else pd.Categorical(new)
        )
    return out


def _file_coords(
    src: ad.AnnData, data: np.ndarray, names: np.ndarray, pm: Mapping[str, Any], coord_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """A data-set layer's points in the file's axes (``(x, y[, z])``), and which of them the user
    moved.

    A layer drawn across samples holds each cell at its sample's side-by-side offset
    (:func:`~napari_spatial_impute.viz.layers.section_spec`, metadata ``sample_key``): the offset
    is taken off here, so the file keeps its own coordinates. A point still where the layer put
    it is not moved: its stored coordinates are kept exactly (no rounding of adding and taking
    off the offset).
    """
    pts = np.array(data, dtype=np.float64)
    pos = src.obs_names.get_indexer(names)
    known = pos >= 0  # unknown cells are refused by the caller
    moved = np.ones(len(pts), dtype=bool)
    offsets = np.zeros((int(known.sum()), 2))
    if coord_key == "spatial" and pm.get("sample_key"):
        offsets = row_offsets(src, pos[known], str(pm["sample_key"]))
    stored = to_napari(src.obsm[coord_key], pos[known])
    if stored.shape[1] == pts.shape[1]:
        stored[:, -2:] += offsets  # where the layer drew them (the builder's own sum)
        moved[known] = ~(stored == pts[known]).all(axis=1)
    pts[known, -2:] -= offsets
    return from_napari(pts), moved


def _subset(src: ad.AnnData, keep: np.ndarray) -> ad.AnnData:
    """The rows ``keep`` (sorted) of ``src`` as a new AnnData the caller may change (``obs``,
    ``obsm`` entries) without changing ``src``; all cells share ``src``'s matrices (a lazy ``X``
    stays lazy: the writer reads it block by block)."""
    if len(keep) == src.n_obs and np.array_equal(keep, np.arange(src.n_obs)):
        return ad.AnnData(
            X=src.X,
            obs=src.obs.copy(),
            var=src.var.copy(),
            uns=dict(src.uns),
            obsm=dict(src.obsm),
            varm=dict(src.varm),
            layers=dict(src.layers),
            obsp=dict(src.obsp),
            varp=dict(src.varp),
        )
    out = src[keep].copy()
    for col in src.obs.columns:  # subsetting drops unused categories: keep the source's
        if isinstance(src.obs[col].dtype, pd.CategoricalDtype):
            out.obs[col] = out.obs[col].cat.set_categories(src.obs[col].cat.categories)
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
