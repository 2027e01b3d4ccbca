"""Layer data for exploring a mapping result in napari (pure functions, no Qt, no viewer).

Everything here takes a result AnnData (see :mod:`napari_spatial_impute.core.export`) and returns plain
numpy/pandas data plus the keyword arguments of ``viewer.add_points``, so the widgets stay thin
and the logic is testable without a display.

Conventions shared with the rest of the plugin:

* Points coordinates are napari ``(row, col) = (y, x)``: ``obsm["spatial"][:, [1, 0]]``.
* One layer per role for all samples (sections), never per sample or FOV (:mod:`.sections`):
  names ``"<gene> imputed"``, ``"<gene> measured"``, ``"<cluster> probability"``,
  ``"most likely <cluster_key>"``. The side-by-side layout of samples sharing coordinates is
  baked into the layer's coordinates (:func:`~napari_spatial_impute.viz.sections.display_yx`);
  the sample and FOV of each point are the feature columns ``sample`` and ``fov``. Showing
  another gene recolours these layers; it adds none.
* Colours are computed with the values (:func:`colorize`: quantile limits, one colormap lookup)
  and handed to napari as an RGBA array: napari's colormap path recolours every point on each
  of its setters (tens of ms at 40,000 points, a second at 10^6); one direct array costs a
  fraction of a millisecond per 40,000 points.
* Layers are built with :func:`napari_spatial_impute.viz.layers.section_spec` (the builder of
  the data sets' own layers too); their metadata
  dict (:func:`~napari_spatial_impute.viz.layers.plugin_meta`) holds ``kind`` (``"imputed"``,
  ``"measured"``, ``"probability"``, ``"predicted"``, ``"interval"``), ``sample`` (``""``: all),
  ``value`` (gene or cluster), ``rows`` (int64 row of each point in the result AnnData),
  ``colormap`` and ``limits`` (the colour bar), ``columns`` (the value's feature columns) and
  ``explore``.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_spatial_impute._errors import InputError
from napari_spatial_impute.io.files import categorical_from_codes, sample_labels
from napari_spatial_impute.io.palette import stored_palette
from napari_spatial_impute.io.schema import halfwidths, interval_levels, resolve_gene
from napari_spatial_impute.viz.layers import (
    FOV_COLUMN,
    PREDICTED_ROLE,
    PointsSpec,
    category_colors,
    layer_name,
    predicted_layer_name,
    robust_limits,
    section_spec,
)
from napari_spatial_impute.viz.sections import (
    fov_names,
    resolve_fov_key,
    resolve_sample_key,
    section_rows,
)

ValueKind = Literal["imputed", "measured", "probability"]
VALUE_KINDS: tuple[str, ...] = ("imputed", "measured", "probability")
#: Colormap of each value kind (the measured values share the imputed genes' scheme).
COLORMAPS: dict[str, str] = {"imputed": "viridis", "measured": "viridis", "probability": "magma"}


_HOVER_CACHE: dict[tuple[int, str | None, str | None, bytes], tuple[weakref.ref, pd.DataFrame]] = {}


# ---------------------------------------------------------------------------------------------
# values and contrast


def gene_names(result: ad.AnnData) -> list[str]:
    """All imputed (reference) genes of a result."""
    return list(map(str, result.var_names))


def shared_genes(result: ad.AnnData) -> list[str]:
    """Reference names of the genes that were also measured in space."""
    return [str(g) for g in result.var_names[result.var["is_shared"].astype(bool).to_numpy()]]


def cluster_names(result: ad.AnnData) -> list[str]:
    """Cluster columns of ``obsm["cluster_probabilities"]`` (empty without a cluster key)."""
    probs = result.obsm.get("cluster_probabilities")
    return [] if probs is None else list(map(str, probs.columns))


def values(result: ad.AnnData, kind: str, name: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Values of one gene or cluster at the result's cells, as float32.

    Parameters
    ----------
    result
        Result AnnData.
    kind
        ``"imputed"`` (column of ``X``), ``"measured"`` (``obsm["measured"]``, for shared genes)
        or ``"probability"`` (``obsm["cluster_probabilities"]``).
    name
        Gene (reference name, any case) or cluster.
    rows
        Cells to return (all when ``None``).

    An imputed gene is the one column read or computed (:func:`gene_column`): a lazy result's
    ``X`` (computed from the map, or left in its file) gives that gene alone, and the last few
    genes shown are cached per result array (a new result has new arrays, so a cached gene is
    never another result's).
    """
    if kind == "imputed":
        gene = resolve_gene(result, name)
        if rows is not None:  # a few cells of a lazy X: those cells alone (a clicked cell)
            return gene_column(result, gene, rows).astype(np.float32, copy=False)
        col = gene_column(result, gene)
    elif kind == "measured":
        gene = resolve_gene(result, name)
        measured_name = (
            str(result.var.loc[gene, "measured_name"]) if "measured_name" in result.var else ""
        )
        if not measured_name or "measured" not in result.obsm:
            raise InputError(f"gene {gene!r} was not measured in space; only imputed values exist.")
        col = result.obsm["measured"][measured_name].to_numpy()
    elif kind == "probability":
        probs = result.obsm.get("cluster_probabilities")
        if probs is None or str(name) not in probs.columns:
            raise InputError(
                f"cluster {name!r} has no probabilities; clusters are {cluster_names(result)}."
            )
        col = probs[str(name)].to_numpy()
    else:
        raise InputError(f"value kind {kind!r} is not known; use one of {', '.join(VALUE_KINDS)}.")
    col = np.asarray(col, dtype=np.float32)
    return col if rows is None else col[rows]


def shared_limits(result: ad.AnnData, kind: str, name: str) -> tuple[float, float]:
    """Robust limits of one gene/cluster over all cells, so every FOV shares one colour scale."""
    return value_limits(kind, values(result, kind, name))


# ---------------------------------------------------------------------------------------------
# hover text


def top_genes_text(
    result: ad.AnnData, rows: np.ndarray, n: int = 3, chunk: int = 4096
) -> np.ndarray:
    """``"Gad1 3.2, Slc32a1 2.9, ..."``: each cell's ``n`` highest imputed genes, as strings."""
    rows = np.asarray(rows, dtype=np.int64)
    names = np.asarray(gene_names(result), dtype=object)
    n = min(n, len(names))
    out = np.empty(len(rows), dtype=object)
    for s in range(0, len(rows), chunk):
        block = cell_rows(result, rows[s : s + chunk])
        top = (
            np.argpartition(-block, n - 1, axis=1)[:, :n]
            if n < block.shape[1]
            else np.tile(np.arange(n), (len(block), 1))
        )
        vals = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-vals, axis=1)
        top, vals = np.take_along_axis(top, order, 1), np.take_along_axis(vals, order, 1)
        out[s : s + len(block)] = [
            ", ".join(f"{g} {v:.3g}" for g, v in zip(names[t], vv, strict=True))
            for t, vv in zip(top, vals, strict=True)
        ]
    return out


def top_clusters_text(result: ad.AnnData, rows: np.ndarray, n: int = 2) -> np.ndarray | None:
    """``"Astrocyte 0.71, OD Mature 0.12"`` for each cell, or ``None`` without cluster probabilities."""
    probs = result.obsm.get("cluster_probabilities")
    if probs is None:
        return None
    p = probs.to_numpy(dtype=np.float32)[np.asarray(rows, dtype=np.int64)]
    names = np.asarray(list(map(str, probs.columns)), dtype=object)
    n = min(n, len(names))
    top = np.argsort(-p, axis=1)[:, :n]
    vals = np.take_along_axis(p, top, axis=1)
    return np.asarray(
        [
            ", ".join(f"{c} {v:.2f}" for c, v in zip(names[t], vv, strict=True))
            for t, vv in zip(top, vals, strict=True)
        ],
        dtype=object,
    )


#: Hover columns of the two most likely clusters and their probabilities.
TOP_CLUSTER_COLUMNS: tuple[str, str, str, str] = ("top cluster", "p", "2nd cluster", "p 2nd")


def top_clusters(result: ad.AnnData, rows: np.ndarray) -> pd.DataFrame | None:
    """Each cell's two most likely clusters (Categorical) and probabilities (float32).

    Categorical codes and numbers, never per-cell text: 10^6 cells x 30 clusters take a fraction
    of a second. ``None`` without cluster probabilities.
    """
    probs = result.obsm.get("cluster_probabilities")
    if probs is None or probs.shape[1] == 0:
        return None
    names = list(map(str, probs.columns))
    out: dict[str, Any] = {}
    rows = np.asarray(rows, dtype=np.int64)
    for s in range(0, len(rows), 262_144):  # bounded memory at 10^6 cells
        p = probs.to_numpy(dtype=np.float32)[rows[s : s + 262_144]]
        n = min(2, p.shape[1])
        top = (
            np.argpartition(-p, n - 1, axis=1)[:, :n]
            if p.shape[1] > n
            else np.tile(np.arange(n), (len(p), 1))
        )
        vals = np.take_along_axis(p, top, axis=1)
        order = np.argsort(-vals, axis=1)
        top, vals = np.take_along_axis(top, order, 1), np.take_along_axis(vals, order, 1)
        for j in range(n):
            out.setdefault(TOP_CLUSTER_COLUMNS[2 * j], []).append(top[:, j])
            out.setdefault(TOP_CLUSTER_COLUMNS[2 * j + 1], []).append(vals[:, j])
    frame = pd.DataFrame(index=pd.RangeIndex(len(rows)))
    for col, parts in out.items():
        arr = np.concatenate(parts) if parts else np.empty(0)
        if col in (TOP_CLUSTER_COLUMNS[0], TOP_CLUSTER_COLUMNS[2]):
            frame[col] = categorical_from_codes(arr.astype(np.int32), names)
        else:
            frame[col] = arr.astype(np.float32)
    return frame


def hover_features(
    result: ad.AnnData,
    rows: np.ndarray,
    fov_key: str | None = None,
    sample_key: str | None = None,
) -> pd.DataFrame:
    """Features every exploration layer carries besides its values: the cell, its FOV and its
    two most likely clusters with their probabilities (napari prints a hovered point's features
    in the status bar, so these are the hover text).

    Built from codes and numbers (no per-cell text but the cell names), and cached per result
    and set of rows, so showing another gene does not rebuild it; a result changed in place
    after its first display keeps its old hover text.
    """
    rows = np.asarray(rows, dtype=np.int64)
    key = (
        id(result),
        fov_key,
        sample_key,
        hashlib.blake2b(rows.tobytes(), digest_size=16).digest(),
    )
    hit = _HOVER_CACHE.get(key)
    if hit is not None and hit[0]() is result:
        return hit[1].copy(deep=False)
    df = pd.DataFrame({"cell": np.asarray(result.obs_names[rows], dtype=object)})
    fovs = fov_names(result, resolve_fov_key(result, fov_key), sample_key)
    df[FOV_COLUMN] = categorical_from_codes(np.asarray(fovs.codes)[rows], fovs.categories)
    clusters = top_clusters(result, rows)
    if clusters is not None:
        df = pd.concat([df, clusters], axis=1)
    for k in [k for k, (ref, _) in _HOVER_CACHE.items() if ref() is None or len(_HOVER_CACHE) > 8]:
        _HOVER_CACHE.pop(k, None)
    _HOVER_CACHE[key] = (weakref.ref(result), df)
    return df.copy(deep=False)


def cell_summary(result: ad.AnnData, row: int, genes: Sequence[str] = (), n_genes: int = 5) -> str:
    """Multi-line description of one cell: chosen genes, top imputed genes, top clusters."""

    lines = [f"cell {result.obs_names[row]}"]
    for g in genes:
        try:
            line = f"{g} imputed: {values(result, 'imputed', g, np.array([row]))[0]:.3g}"
            interval = hover_interval(result, resolve_gene(result, g), np.array([row]))
        except InputError:
            continue
        if interval is not None:  # "(90% interval ± 17.2)"
            line += f" ({interval[0]} {interval[1][0]:.3g})"
        lines.append(line)
    lines.append("top imputed: " + top_genes_text(result, np.array([row]), n_genes)[0])
    clusters = top_clusters_text(result, np.array([row]), 3)
    if clusters is not None:
        lines.append("clusters: " + clusters[0])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# colours: one vectorised lookup, done where the values are read (a worker thread)

#: Entries of a colormap's lookup table (napari's own colormaps are sampled as finely).
LUT_SIZE = 256


def colormap_lut(name: str, n: int = LUT_SIZE) -> np.ndarray:
    """``(n, 4)`` float32 RGBA samples of a named colormap (matplotlib's, the same as napari's
    viridis, magma, plasma), from the low end to the high end."""
    from matplotlib import colormaps

    return np.asarray(colormaps[name](np.linspace(0.0, 1.0, n)), dtype=np.float32)


def colorize(
    vals: np.ndarray,
    colormap: str,
    limits: tuple[float, float],
    nan_color: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
) -> np.ndarray:
    """Each value's colour, ``(n, 4)`` float32: ``limits`` stretched over the colormap, values
    outside clipped to its ends, NaN ``nan_color``. One table lookup for all cells (what
    napari's colormap path computes per setter call, here once, anywhere)."""
    lut = colormap_lut(colormap)
    v = np.asarray(vals, dtype=np.float32).ravel()
    lo, hi = float(limits[0]), float(limits[1])
    scale = (len(lut) - 1) / (hi - lo) if hi > lo else 0.0
    finite = np.isfinite(v)
    pos = np.where(finite, (v - np.float32(lo)) * np.float32(scale), 0.0)
    idx = np.clip(np.rint(pos), 0, len(lut) - 1).astype(np.intp)
    out = lut[idx]
    if not finite.all():
        out[~finite] = np.asarray(nan_color, dtype=np.float32)
    return out


def value_limits(kind: str, vals: np.ndarray) -> tuple[float, float]:
    """Contrast limits by quantiles (:func:`robust_limits`); probabilities start at 0."""
    if kind == "probability":
        return 0.0, max(robust_limits(vals)[1], 1e-3)
    return robust_limits(vals)


def category_rgba(colors: dict[Any, str], categories: Sequence[str]) -> np.ndarray:
    """``(n categories, 4)`` float32: the colour of each category (a ``{category: hex}`` map)."""
    from matplotlib.colors import to_rgba

    return np.asarray(
        [to_rgba(colors.get(c, "#b0b0b0")) for c in categories], dtype=np.float32
    ).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# layer specs: one layer per role, every sample in it


def value_layer_specs(
    result: ad.AnnData,
    kind: str,
    name: str,
    *,
    fov_key: str | None = None,
    sample_key: str | None = None,
    samples: Iterable[str] | None = None,
    size: float | None = None,
    hover: bool = True,
) -> list[PointsSpec]:
    """The Points layer of one gene or cluster: every sample in one layer, coloured directly.

    The colours are computed here (quantile limits over all cells, one colormap lookup:
    :func:`colorize`) and given to napari as an RGBA array (``face_color``); the layer's
    metadata dict holds the ``colormap`` and ``limits`` (for the colour bar) and ``columns``,
    the feature columns of the value (the hover text).

    Parameters
    ----------
    result
        Result AnnData.
    kind
        ``"imputed"``, ``"measured"`` or ``"probability"``.
    name
        Gene or cluster.
    fov_key, sample_key
        FOV and sample columns of ``result.obs`` (``None``: the stored ones, or usual names;
        ``sample_key=""``: no samples), see :mod:`.sections`.
    samples
        Samples to draw (all when ``None``).
    size
        Point size in data units (default from the cell spacing).
    hover
        Add the hover columns (cell, FOV, sample, top clusters) to ``features``.

    Returns
    -------
    A list of one spec (the list is kept for the callers of the per-sample layers of old).
    """
    if kind in ("imputed", "measured"):
        name = resolve_gene(result, name)
    all_vals = values(result, kind, name)
    limits = value_limits(kind, all_vals)
    colormap = COLORMAPS[kind]

    def features(rows: np.ndarray) -> pd.DataFrame:
        feats = pd.DataFrame({name: all_vals[rows]})
        if hover and kind == "imputed":
            extra = hover_interval(result, name, rows)
            if extra is not None:  # the hovered gene's interval: "90% interval ±: 2.77"
                feats[extra[0]] = extra[1]
        return feats

    return [
        section_points_spec(
            result,
            features,
            samples=samples,
            fov_key=fov_key,
            sample_key=sample_key,
            size=size,
            hover=hover,
            colors=lambda feats: colorize(feats[name].to_numpy(), colormap, limits),
            meta={"kind": kind, "value": name, "colormap": colormap, "limits": limits},
            name=layer_name(name, kind),
        )
    ]


#: Feature column of the exploration layers holding each point's sample.
SAMPLE_COLUMN = "sample"


def section_points_spec(
    result: ad.AnnData,
    features: Callable[[np.ndarray], pd.DataFrame],
    *,
    samples: Iterable[str] | None,
    fov_key: str | None,
    sample_key: str | None,
    size: float | None,
    hover: bool,
    colors: Callable[[pd.DataFrame], Any],
    meta: dict[str, Any],
    name: str,
    style: dict[str, Any] | None = None,
) -> PointsSpec:
    """One Points layer spec of every chosen sample, the builder every exploration role shares.

    The points are drawn where :func:`~napari_spatial_impute.viz.sections.display_yx` puts the
    cells (samples sharing coordinates side by side, the offsets in the data; no ``translate``);
    the sample and FOV of each point are feature columns.

    Parameters
    ----------
    result
        Result AnnData.
    features
        The layer's own feature columns (the value shown) for the given rows of ``result``.
    samples
        Samples to draw (all when ``None``; an unknown one is an :class:`InputError`).
    fov_key, sample_key
        FOV and sample columns (see :func:`value_layer_specs`).
    size
        Point size in data units (default from the cell spacing,
        :func:`~napari_spatial_impute.viz.sections.drawn_point_size`).
    hover
        Append the hover columns (:func:`hover_features`, and the sample).
    colors
        The ``face_color`` of the layer from its own features (an RGBA array, or a column).
    meta
        Entries of the layer's metadata dict (``kind``, ``value``...).
    name
        Layer name.
    style
        Extra Points keyword arguments (a colour cycle).
    """
    fov_key = resolve_fov_key(result, fov_key)
    sample_key = resolve_sample_key(result, sample_key, fov_key)
    rows = section_rows(result, sample_key, samples)
    own = features(rows)
    feats = own
    if hover:
        parts = [own, hover_features(result, rows, fov_key, sample_key)]
        if sample_key is not None:
            labels = sample_labels(result, sample_key)
            parts.append(
                pd.DataFrame(
                    {
                        SAMPLE_COLUMN: categorical_from_codes(
                            np.asarray(labels.codes)[rows], list(map(str, labels.categories))
                        )
                    }
                )
            )
        feats = pd.concat(parts, axis=1)
    face = colors(own)
    column = face if isinstance(face, str) else None
    return section_spec(
        result,
        name,
        feats,
        column,
        rows=rows,
        sample_key=sample_key,
        kind=meta["kind"],
        size=size,
        style={**(style or {}), **({} if column else {"face_color": face})},
        **{k: v for k, v in meta.items() if k != "kind"},
        columns=list(own.columns),
        explore=True,
    )


def predicted_layer_specs(
    result: ad.AnnData,
    *,
    fov_key: str | None = None,
    sample_key: str | None = None,
    samples: Iterable[str] | None = None,
    size: float | None = None,
    colors: dict[str, str] | None = None,
) -> list[PointsSpec]:
    """The most-likely-cluster Points layer (categorical colour cycle), every sample in it.

    The colours are :func:`category_colors` of the clusters (the result's
    ``uns['<key>_colors']`` when it has one), as on the result's own layers. A list of one.
    """
    key = result.uns.get("spatial_impute", {}).get("cluster_key")
    col = f"{key}_predicted" if key else None
    if col is None or col not in result.obs.columns:
        raise InputError(
            "the result has no most likely cluster; map with a cluster key to get one."
        )
    pred = result.obs[col]
    cats = (
        list(map(str, pred.cat.categories))
        if isinstance(pred.dtype, pd.CategoricalDtype)
        else sorted(map(str, pred.unique()))
    )
    labels = (
        categorical_from_codes(pred.cat.codes, cats)
        if isinstance(pred.dtype, pd.CategoricalDtype)
        and len(set(cats)) == len(cats)
        and not np.any(np.asarray(pred.cat.codes) < 0)
        else pd.Categorical(pred.astype(str), categories=cats)
    )
    prob_col = f"{key}_predicted_probability"

    def features(rows: np.ndarray) -> pd.DataFrame:
        feats = pd.DataFrame({key: labels[rows]})
        if prob_col in result.obs:
            feats["probability"] = result.obs[prob_col].to_numpy(dtype=np.float32)[rows]
        return feats

    cycle = colors or category_colors(cats, stored_palette(result.uns, col))
    return [
        section_points_spec(
            result,
            features,
            samples=samples,
            fov_key=fov_key,
            sample_key=sample_key,
            size=size,
            hover=True,
            colors=lambda feats: key,
            style={"face_color_cycle": cycle},
            meta={"kind": PREDICTED_ROLE, "value": key},
            name=predicted_layer_name(key),
        )
    ]


# ---------------------------------------------------------------------------------------------
# linking spatial cells <-> reference cells


def unit_matrix(result: ad.AnnData, reference: ad.AnnData) -> sp.csr_matrix:
    """Sparse ``units x reference cells`` membership, rows summing to 1.

    A unit is one reference cell in cells mode and a cluster (its cells, equally weighted) in
    clusters mode. Build it once per result and pass it to the linking functions.
    """
    info = result.uns.get("spatial_impute", {})
    units = [str(u) for u in info.get("units", [])]
    if info.get("unit_kind") == "cluster":
        labels = reference.obs[info.get("cluster_key")].astype(str).to_numpy()
        codes = pd.Categorical(labels, categories=units).codes
        ok = codes >= 0
        cols = np.flatnonzero(ok)
        rows = codes[ok].astype(np.int64)
    else:
        index = reference.obs_names.get_indexer(units)
        rows = np.flatnonzero(index >= 0)
        cols = index[rows]
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(units), reference.n_obs))
    size = np.asarray(m.sum(1)).ravel()
    inv = np.divide(1.0, size, out=np.zeros_like(size), where=size > 0)
    return sp.csr_matrix(sp.diags(inv) @ m)


def reference_weights(
    result: ad.AnnData,
    reference: ad.AnnData,
    spatial_rows: Sequence[int],
    units: sp.csr_matrix | None = None,
) -> pd.Series:
    """Reference cells that the given spatial cells map to, with their summed mapped share.

    Uses the result's ``mapping_top_index`` / ``mapping_top_share`` (the best units of each
    spatial cell). Returns a Series indexed by reference row, largest share first.
    """
    rows = np.asarray(list(spatial_rows), dtype=np.int64)
    if rows.size == 0 or "mapping_top_index" not in result.obsm:
        return pd.Series(dtype=np.float64)
    units = unit_matrix(result, reference) if units is None else units
    idx = np.asarray(result.obsm["mapping_top_index"])[rows].ravel()
    share = np.asarray(result.obsm["mapping_top_share"], dtype=np.float64)[rows].ravel()
    per_unit = np.bincount(idx, weights=share, minlength=units.shape[0])
    per_ref = np.asarray(units.T @ per_unit).ravel()
    hit = np.flatnonzero(per_ref > 0)
    return pd.Series(per_ref[hit], index=hit).sort_values(ascending=False)


def spatial_rows_for_reference(
    result: ad.AnnData,
    reference: ad.AnnData,
    reference_rows: Sequence[int] | np.ndarray,
    units: sp.csr_matrix | None = None,
) -> np.ndarray:
    """Spatial cells whose best mapped unit is one of (or contains) the given reference cells."""
    if "mapping_top_index" not in result.obsm:
        return np.empty(0, dtype=np.int64)
    units = unit_matrix(result, reference) if units is None else units
    wanted = np.zeros(reference.n_obs)
    wanted[np.asarray(list(reference_rows), dtype=np.int64)] = 1.0
    unit_hit = np.asarray(units @ wanted).ravel() > 0
    best = np.asarray(result.obsm["mapping_top_index"])[:, 0]
    return np.flatnonzero(unit_hit[best]).astype(np.int64)


def dominant_cluster(
    reference: ad.AnnData, key: str | None, reference_rows: Sequence[int] | np.ndarray
) -> str | None:
    """The most frequent cluster among the given reference cells (``None`` when unknown)."""
    rows = np.asarray(list(reference_rows), dtype=np.int64)
    if key is None or key not in reference.obs or rows.size == 0:
        return None
    return str(reference.obs[key].astype(str).iloc[rows].value_counts().index[0])


def hover_interval(
    result: ad.AnnData, gene: str, rows: np.ndarray
) -> tuple[str, np.ndarray] | None:
    """``("90% interval ±", half-widths)`` for an imputed layer's hover text, ``None`` without."""
    levels = interval_levels(result)
    if not levels:
        return None
    return f"{levels[0]}% interval ±", halfwidths(result, gene, levels[0], rows)


# ---------------------------------------------------------------------------------------------
# reading the imputed matrix one gene or a few cells at a time


def gene_column(result: ad.AnnData, gene: str, rows: np.ndarray | None = None) -> np.ndarray:
    """The imputed values of ``gene`` (reference name) at every cell (or at ``rows``), as read
    from ``X`` alone: one column of a dense, sparse, backed or lazy ``X`` (see
    :mod:`napari_spatial_impute.io.lazy`; a lazy one's recent columns are cached, and a few
    cells of it are computed alone)."""
    from napari_spatial_impute.io.lazy import column, column_at

    j = result.var_names.get_loc(gene)
    return column(result.X, j) if rows is None else column_at(result.X, j, rows)


def cell_rows(result: ad.AnnData, rows: np.ndarray) -> np.ndarray:
    """Every imputed gene at the cells ``rows`` (dense, cells x genes), without computing or
    reading the other cells of a lazy ``X``."""
    from napari_spatial_impute.io.lazy import rows as read_rows

    return read_rows(result.X, rows)
