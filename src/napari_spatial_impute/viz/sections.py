"""Samples (sections) and fields of view of a data set: which cells, where they are drawn and where
the camera goes (pure functions: no Qt, no viewer).

A *sample* is one tissue section (obs column found by
:func:`~napari_spatial_impute.io.files.find_sample_key`); the plugin draws one Points layer per
role for all samples (the sample a feature column). A *field of view* (FOV) is a tile of a
section; FOVs are a feature column of those layers, navigated with the camera, never layers of
their own.

Sections imaged separately usually share coordinates and would be drawn on top of each other;
:func:`sample_offsets` lays them out side by side on a grid. The exploration layers hold every
sample in one layer, and so do the data sets' own layers, drawn where :func:`display_yx` puts
each cell (the offsets baked into the layer's coordinates); everything else drawn across samples
(FOV outlines, link highlights) uses the same positions, and the writer takes the offsets off
again (:func:`row_offsets`).
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputError
from napari_spatial_impute.io.files import (
    categorical_from_codes,
    find_fov_key,
    find_sample_key,
    fov_labels,
    sample_labels,
)
from napari_spatial_impute.io.schema import SDATA_KEY, UNS_KEY
from napari_spatial_impute.viz.coords import point_size, to_napari

#: Gap between samples laid out side by side, as a share of the largest sample's size.
GAP = 0.08
#: Margin of a sample's outline around its cells, as a share of the sample's size (less than
#: half of :data:`GAP`, so outlines of samples laid out side by side never touch).
SAMPLE_MARGIN = 0.03
#: ``sample_key`` that means "no sample column" (``None`` means "find one").
NO_SAMPLES = ""

_T = TypeVar("_T")
_CACHE: dict[tuple[Any, ...], tuple[weakref.ref, Any]] = {}


def _fingerprint(adata: ad.AnnData, columns: tuple[Any, ...]) -> bytes:
    """What the cached values depend on, cheaply: the cell count, the coordinates and the named
    obs columns, each read at up to 512 evenly spaced cells (an AnnData changed in place, as
    tests and notebooks do, is then recomputed)."""
    h = hashlib.blake2b(digest_size=16)
    n = adata.n_obs
    picks = np.unique(np.linspace(0, max(n - 1, 0), min(n, 512)).astype(np.int64))
    h.update(str(n).encode())
    raw = adata.obsm.get("spatial")
    if raw is not None:
        arr = np.asarray(raw.to_numpy() if isinstance(raw, pd.DataFrame) else raw)
        h.update(str(arr.shape).encode())
        if n:
            h.update(np.ascontiguousarray(arr[picks]).tobytes())
    for col in columns:
        if isinstance(col, str) and col in adata.obs.columns:
            values = adata.obs[col]
            h.update(f"{col}:{values.dtype}".encode())
            if n:
                h.update("\x00".join(map(str, values.iloc[picks])).encode())
    return h.digest()


def _cached(adata: ad.AnnData, key: tuple[Any, ...], compute: Callable[[], _T]) -> _T:
    """``compute()`` once per AnnData object, key and state of the columns the key names."""
    full = (id(adata), *key, _fingerprint(adata, key))
    hit = _CACHE.get(full)
    if hit is not None and hit[0]() is adata:
        return hit[1]  # type: ignore[no-any-return]
    value = compute()
    for k in [k for k, (ref, _) in _CACHE.items() if ref() is None]:
        _CACHE.pop(k, None)
    if len(_CACHE) > 64:
        _CACHE.clear()
    _CACHE[full] = (weakref.ref(adata), value)
    return value


# ---------------------------------------------------------------------------------------------
# keys


def _stored(adata: ad.AnnData, name: str) -> str | None:
    info = adata.uns.get(UNS_KEY, {})
    value = info.get(name) if hasattr(info, "get") else None
    return str(value) if value and str(value) in adata.obs.columns else None


def resolve_fov_key(adata: ad.AnnData, fov_key: str | None = None) -> str | None:
    """The FOV column: ``fov_key`` if it is in ``obs``, else the one a result stored in uns, else a
    column with a usual FOV name (:func:`~napari_spatial_impute.io.files.find_fov_key`)."""
    if fov_key and fov_key in adata.obs.columns:
        return fov_key
    return _stored(adata, "fov_key") or find_fov_key(adata)


def resolve_sample_key(
    adata: ad.AnnData, sample_key: str | None = None, fov_key: str | None = None
) -> str | None:
    """The sample column: ``sample_key`` (checked; :data:`NO_SAMPLES` for none), else the one a
    result stored in uns, else a column with a usual sample name that can be one."""
    if sample_key == NO_SAMPLES:
        return None
    fov_key = resolve_fov_key(adata, fov_key)
    if sample_key is not None:
        return find_sample_key(adata, fov_key, sample_key)
    info = adata.uns.get(UNS_KEY, {})
    if hasattr(info, "get") and info.get("sample_key") is not None:
        stored = str(info.get("sample_key"))  # a result records its choice, "" for none
        if stored == NO_SAMPLES:
            return None
        if stored in adata.obs.columns:
            return stored
    return find_sample_key(adata, fov_key)


# ---------------------------------------------------------------------------------------------
# rows


def group_rows(labels: pd.Categorical) -> dict[str, np.ndarray]:
    """Rows of each category (in category order; empty categories left out), int64."""
    codes = np.asarray(labels.codes)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(labels.categories) + 1))
    return {
        str(cat): order[bounds[i] : bounds[i + 1]].astype(np.int64)
        for i, cat in enumerate(labels.categories)
        if bounds[i + 1] > bounds[i]
    }


def sample_rows(adata: ad.AnnData, sample_key: str | None) -> dict[str, np.ndarray]:
    """Rows of each sample (``{"": all rows}`` without a sample column)."""
    return _cached(
        adata, ("samples", sample_key), lambda: group_rows(sample_labels(adata, sample_key))
    )


def section_rows(
    adata: ad.AnnData, sample_key: str | None, samples: Iterable[str] | None = None
) -> np.ndarray:
    """Rows of the chosen samples (all when ``None``), sample after sample, int64: the points of
    one layer holding every sample (:func:`~napari_spatial_impute.viz.layers.section_spec`)."""
    by_sample = sample_rows(adata, sample_key)
    chosen = list(by_sample) if samples is None else [str(s) for s in samples]
    missing = [s for s in chosen if s not in by_sample]
    if missing:
        raise InputError(
            f"sample {missing[0]!r} is not in the data; samples are {list(by_sample)}."
        )
    if len(chosen) == len(by_sample) and len(chosen) == 1:
        return by_sample[chosen[0]]
    parts = [by_sample[s] for s in chosen]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def fov_names(adata: ad.AnnData, fov_key: str | None, sample_key: str | None) -> pd.Categorical:
    """FOV of each cell; ``"<sample> · <fov>"`` when FOV ids repeat across samples."""

    def compute() -> pd.Categorical:
        fovs = fov_labels(adata, fov_key)
        if sample_key is None or fov_key is None:
            return fovs
        samples = sample_labels(adata, sample_key)
        pair = np.asarray(samples.codes, np.int64) * len(fovs.categories) + np.asarray(fovs.codes)
        per_fov = pd.Series(np.asarray(samples.codes)).groupby(np.asarray(fovs.codes)).nunique()
        if per_fov.max() <= 1:
            return fovs
        uniq, codes = np.unique(pair, return_inverse=True)
        names = [
            f"{samples.categories[u // len(fovs.categories)]} · {fovs.categories[u % len(fovs.categories)]}"
            for u in uniq
        ]
        return categorical_from_codes(codes, names)

    return _cached(adata, ("fov_names", fov_key, sample_key), compute)


def fov_rows(
    adata: ad.AnnData, fov_key: str | None, sample_key: str | None = None
) -> dict[str, np.ndarray]:
    """Rows of each FOV (natural order of FOV ids; one FOV ``"0"`` without a key)."""
    return _cached(
        adata,
        ("fovs", fov_key, sample_key),
        lambda: group_rows(fov_names(adata, fov_key, sample_key)),
    )


# ---------------------------------------------------------------------------------------------
# layout


def _yx(adata: ad.AnnData, rows: np.ndarray | None = None) -> np.ndarray:
    """``(y, x)`` of cells as stored, NaN where a coordinate is missing or not a number: the
    layout and outlines leave such cells out; building layers reports them
    (:func:`~napari_spatial_impute.viz.coords.checked_coords`)."""
    raw = adata.obsm["spatial"]
    raw = raw.to_numpy() if isinstance(raw, pd.DataFrame) else np.asarray(raw)
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.full((adata.n_obs, 2), np.nan)
    return to_napari(arr, rows, ndim=2)


def _box(yx: np.ndarray) -> np.ndarray:
    """``[y0, x0, y1, x1]`` of the finite points (zeros when none)."""
    yx = yx[np.isfinite(yx).all(axis=1)]
    if not len(yx):
        return np.zeros(4)
    return np.concatenate([yx.min(0), yx.max(0)])


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def sample_offsets(adata: ad.AnnData, sample_key: str | None) -> dict[str, np.ndarray]:
    """``{sample: (dy, dx)}``: where each sample is drawn, added to its ``(y, x)`` coordinates.

    Samples whose bounding boxes do not overlap stay where they are (zeros). When any two
    overlap (sections imaged separately share coordinates), all are placed on a near-square grid
    in sample order, each grid cell the size of the largest sample plus :data:`GAP`, so none
    covers another. Cells read from a SpatialData store stay where the store's coordinate system
    puts them (zeros): its images and labels are drawn there.
    """

    def compute() -> dict[str, np.ndarray]:
        groups = sample_rows(adata, sample_key)
        zero = {s: np.zeros(2) for s in groups}
        if len(groups) < 2 or SDATA_KEY in adata.uns:
            return zero
        yx = _yx(adata)
        boxes = {s: _box(yx[rows]) for s, rows in groups.items()}
        names = list(boxes)
        if not any(
            _overlap(boxes[a], boxes[b]) for i, a in enumerate(names) for b in names[i + 1 :]
        ):
            return zero
        size = np.max([b[2:] - b[:2] for b in boxes.values()], axis=0)
        step = size * (1.0 + GAP) + 1e-9
        cols = math.ceil(math.sqrt(len(names)))
        origin = np.min([b[:2] for b in boxes.values()], axis=0)
        return {
            s: origin + np.array([i // cols, i % cols]) * step - boxes[s][:2]
            for i, s in enumerate(names)
        }

    return _cached(adata, ("offsets", sample_key), compute)


def laid_out(adata: ad.AnnData, sample_key: str | None) -> bool:
    """Whether samples sharing coordinates were moved side by side (any offset not zero)."""
    return any(np.any(o) for o in sample_offsets(adata, sample_key).values())


def drawn_point_size(adata: ad.AnnData, sample_key: str | None) -> float:
    """The default point diameter where cells are drawn: the cells' spacing within a sample
    (:func:`~napari_spatial_impute.viz.coords.point_size` of the laid-out positions; samples that
    share coordinates would otherwise halve it)."""
    if not laid_out(adata, sample_key):
        return point_size(adata)
    return _cached(
        adata, ("point_size", sample_key), lambda: point_size(display_yx(adata, None, sample_key))
    )


def outline_width(adata: ad.AnnData, sample_key: str | None) -> float:
    """Edge width of FOV outlines: a sixth of the point size, and at least 1/2,000 of the drawn
    extent (about a pixel on a whole-section view; thinner lines vanish in places)."""
    yx = display_yx(adata, None, sample_key)
    yx = yx[np.isfinite(yx).all(axis=1)]
    extent = float(np.ptp(yx, axis=0).max()) if len(yx) else 1.0
    return max(drawn_point_size(adata, sample_key) / 6.0, extent / 2000.0, 1e-6)


def display_yx(
    adata: ad.AnnData, rows: np.ndarray | None = None, sample_key: str | None = None
) -> np.ndarray:
    """``(y, x)`` of cells where they are drawn: the file's coordinates plus their sample's offset."""
    rows = np.arange(adata.n_obs) if rows is None else np.asarray(rows, dtype=np.int64)
    return _yx(adata, rows) + row_offsets(adata, rows, sample_key)


def row_offsets(adata: ad.AnnData, rows: np.ndarray, sample_key: str | None) -> np.ndarray:
    """``(len(rows), 2)``: the offset of each cell's sample (:func:`sample_offsets`; zeros when
    the samples stay where they are). Added to a layer's ``(y, x)``, it bakes the side-by-side
    layout into the data of one layer holding every sample."""
    rows = np.asarray(rows, dtype=np.int64)
    if not laid_out(adata, sample_key):
        return np.zeros((len(rows), 2))
    offsets = sample_offsets(adata, sample_key)
    labels = sample_labels(adata, sample_key)
    table = np.array([offsets.get(str(c), np.zeros(2)) for c in labels.categories])
    return table[np.asarray(labels.codes)[rows]]


# ---------------------------------------------------------------------------------------------
# outlines and the camera


def _rectangle(box: np.ndarray) -> np.ndarray:
    y0, x0, y1, x1 = box
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=np.float64)


def fov_boxes(
    adata: ad.AnnData, fov_key: str | None, sample_key: str | None = None
) -> tuple[list[np.ndarray], list[str]]:
    """The bounding rectangle of every FOV where it is drawn (4 corners in ``(y, x)``) and its id.

    One Shapes layer of these outlines names the FOVs of a whole section (never a layer per FOV).
    """

    def compute() -> tuple[list[np.ndarray], list[str]]:
        yx = display_yx(adata, None, sample_key)
        boxes, names = [], []
        for fov, rows in fov_rows(adata, fov_key, sample_key).items():
            pts = yx[rows]
            if not np.isfinite(pts).all(axis=1).any():
                continue
            boxes.append(_rectangle(_box(pts)))
            names.append(fov)
        return boxes, names

    return _cached(adata, ("fov_boxes", fov_key, sample_key), compute)


def sample_boxes(adata: ad.AnnData, sample_key: str | None) -> tuple[list[np.ndarray], list[str]]:
    """The rectangle of every sample where it is drawn, and its name (none without samples)."""
    if sample_key is None:
        return [], []
    yx = display_yx(adata, None, sample_key)
    out = []
    for s, rows in sample_rows(adata, sample_key).items():
        box = _box(yx[rows])
        # a margin around the sample: its name (drawn at the upper left corner) sits above the
        # first FOV's name instead of on it
        pad = SAMPLE_MARGIN * float(max(np.max(box[2:] - box[:2]), 1e-9))
        out.append((_rectangle(box + np.array([-pad, -pad, pad, pad])), s))
    return [b for b, _ in out], [s for _, s in out]


def fov_bounds(
    adata: ad.AnnData, fov_key: str | None, fov: str, sample_key: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(center, size)`` of one FOV's bounding box where it is drawn, in ``(y, x)``."""
    boxes, names = fov_boxes(adata, fov_key, sample_key)
    if str(fov) not in names:
        known = list(fov_rows(adata, fov_key, sample_key))
        shown = ", ".join(known[:10]) + (f", ... ({len(known)} in all)" if len(known) > 10 else "")
        raise InputError(f"FOV {fov!r} is not in the data; FOVs are {shown}.")
    box = boxes[names.index(str(fov))]
    lo, hi = box.min(0), box.max(0)
    return (lo + hi) / 2.0, hi - lo


def section_bounds(
    adata: ad.AnnData, sample_key: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(center, size)`` of all cells where they are drawn (every sample), in ``(y, x)``."""
    yx = display_yx(adata, None, sample_key)
    finite = yx[np.isfinite(yx).all(axis=1)]
    if not len(finite):
        return np.zeros(2), np.ones(2)
    lo, hi = finite.min(0), finite.max(0)
    return (lo + hi) / 2.0, hi - lo


def fov_at(
    adata: ad.AnnData, fov_key: str | None, position: Any, sample_key: str | None = None
) -> str | None:
    """The FOV whose outline holds ``position`` (``(..., y, x)``; the smallest when several)."""
    boxes, names = fov_boxes(adata, fov_key, sample_key)
    if not boxes:
        return None
    y, x = (float(v) for v in np.asarray(position, dtype=np.float64)[-2:])
    arr = np.stack(boxes)
    lo, hi = arr.min(1), arr.max(1)
    inside = (lo[:, 0] <= y) & (y <= hi[:, 0]) & (lo[:, 1] <= x) & (x <= hi[:, 1])
    if not inside.any():
        return None
    area = np.prod(hi - lo, axis=1)
    hit = np.flatnonzero(inside)
    return names[int(hit[np.argmin(area[hit])])]


def camera_for_box(
    center: np.ndarray, size: np.ndarray, canvas_size: tuple[int, int], margin: float = 0.05
) -> float:
    """Camera zoom (screen pixels per data unit) that fits a box of ``size`` in ``canvas_size``."""
    h, w = (float(max(s, 1e-9)) * (1.0 + 2 * margin) for s in size)
    ch, cw = canvas_size
    return float(max(min(ch / h, cw / w), 1e-6))


# ---------------------------------------------------------------------------------------------
# the outline layer: FOVs and samples, focus on one FOV

#: Most FOV outlines drawn in one Shapes layer (beyond, napari's shapes take seconds to build).
MAX_OUTLINES = 2_000
#: How the FOVs other than the focused one are drawn.
FOCUS_MODES: tuple[str, ...] = ("shown", "dimmed", "hidden")
#: Opacity of the dark cover over the other FOVs in ``"dimmed"`` mode.
DIM_ALPHA = 0.65


def outline_data(
    adata: ad.AnnData, fov_key: str | None, sample_key: str | None
) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Rectangles of every FOV and every sample where they are drawn, and their features
    (``name``, ``kind`` = ``"fov"`` / ``"sample"``), for one Shapes layer.

    Raises
    ------
    InputError
        Above :data:`MAX_OUTLINES` FOVs (what the FOV key holds is then not fields of view).
    """
    boxes, names = fov_boxes(adata, fov_key, sample_key)
    if len(boxes) > MAX_OUTLINES:
        raise InputError(
            f"{len(boxes):,} FOVs are too many outlines to draw (at most {MAX_OUTLINES:,}); "
            "choose a coarser FOV key, or navigate with the FOV list."
        )
    s_boxes, s_names = sample_boxes(adata, sample_key)
    features = pd.DataFrame(
        {
            "name": pd.Series([*names, *s_names], dtype=object),
            "kind": pd.Categorical(["fov"] * len(names) + ["sample"] * len(s_names)),
        }
    )
    return [*boxes, *s_boxes], features


def focus_colors(
    features: pd.DataFrame,
    focus: str | None,
    mode: str,
    background: Any = (0.0, 0.0, 0.0, 1.0),
) -> np.ndarray:
    """Face colour (RGBA) of each outline: clear for the focused FOV and the samples; the other
    FOVs clear (``"shown"``), under a dark veil (``"dimmed"``) or covered in ``background``
    (``"hidden"``), so one Shapes layer dims or hides every FOV but one."""
    if mode not in FOCUS_MODES:
        raise InputError(f"focus mode {mode!r} is not known; use one of {', '.join(FOCUS_MODES)}.")
    out = np.zeros((len(features), 4), dtype=np.float32)
    if mode == "shown" or focus is None:
        return out
    other = (features["kind"].astype(str).to_numpy() == "fov") & (
        features["name"].astype(str).to_numpy() != str(focus)
    )
    if mode == "dimmed":
        out[other] = (0.0, 0.0, 0.0, DIM_ALPHA)
    else:
        bg = np.asarray(background, dtype=np.float32).ravel()
        out[other] = (*bg[:3], 1.0)
    return out
