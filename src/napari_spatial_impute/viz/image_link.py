"""Linking a segmentation label image to the spatial cells (pure functions, no Qt).

A label image has one integer id per segmented cell. It is placed in the points' coordinate
frame (napari ``(y, x)``) with a per-axis scale and translate (:class:`Alignment`), taken from
FOV offsets, entered by hand, or fitted to the cells whose label id is known (CosMx cell names
``fov2_c113`` are label 113; ISS cells ``cell_7`` are label 7).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_spatial_impute._errors import InputError, first_line

_TRAILING_INT = re.compile(r"(\d+)$")
#: obs columns that may hold each cell's label id.
LABEL_COLUMNS: tuple[str, ...] = ("label", "label_id", "cell_id", "CellId", "cell_ID", "mask_id")


@dataclass(frozen=True)
class Alignment:
    """Image pixel ``(row, col)`` to points frame ``(y, x)``: ``yx = scale * rc + translate``.

    Attributes
    ----------
    scale
        ``(sy, sx)``; a negative ``sy`` flips the image upside down.
    translate
        ``(ty, tx)``.
    rms
        Root-mean-square distance between matched cells and label centroids after a fit
        (``nan`` when the alignment was not fitted).
    """

    scale: tuple[float, float] = (1.0, 1.0)
    translate: tuple[float, float] = (0.0, 0.0)
    rms: float = float("nan")

    def to_image(self, yx: np.ndarray) -> np.ndarray:
        """Points-frame ``(y, x)`` to fractional image ``(row, col)``."""
        return (np.asarray(yx, dtype=np.float64) - np.asarray(self.translate)) / np.asarray(
            self.scale
        )

    def to_world(self, rc: np.ndarray) -> np.ndarray:
        """Image ``(row, col)`` to points-frame ``(y, x)``."""
        return np.asarray(rc, dtype=np.float64) * np.asarray(self.scale) + np.asarray(
            self.translate
        )


def load_label_image(path: str | Path) -> np.ndarray:
    """Read a label image (``.tif``/``.tiff``, scipy sparse ``.npz``, ``.npy``) as a 2D int array."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"label image {str(p)!r} does not exist; check the path.")
    suffix = "".join(p.suffixes[-2:]).lower() if p.suffix.lower() == ".npz" else p.suffix.lower()
    try:
        if suffix.endswith(".npz"):
            arr = sp.load_npz(p).toarray()
        elif suffix == ".npy":
            arr = np.load(p)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(p)
        else:
            import imageio.v3 as iio

            arr = iio.imread(p)
    except Exception as exc:
        raise InputError(f"cannot read label image {str(p)!r} ({first_line(exc)}).") from None
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2:
        raise InputError(f"label image {p.name!r} has shape {arr.shape}; give one 2D segmentation.")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError(
                f"label image {p.name!r} holds non-integer values; give a segmentation mask."
            )
    if arr.size and arr.min() < 0:
        raise InputError(f"label image {p.name!r} has negative ids; label ids must be >= 0.")
    return arr.astype(np.int32 if arr.size == 0 or arr.max() < 2**31 else np.int64, copy=False)


def read_fov_positions(path: str | Path) -> pd.DataFrame:
    """Read a FOV offsets table (e.g. CosMx ``*_fov_positions_file.csv``).

    Returns
    -------
    DataFrame indexed by FOV id (str) with float columns ``x`` and ``y`` (global pixels).
    """
    df = pd.read_csv(path)
    cols = {c.lower(): c for c in df.columns}
    fov = next((cols[c] for c in ("fov", "fov_id", "field_of_view") if c in cols), df.columns[0])
    xcol = next((c for c in df.columns if c.lower().startswith("x")), None)
    ycol = next((c for c in df.columns if c.lower().startswith("y")), None)
    if xcol is None or ycol is None:
        raise InputError(
            f"FOV positions file has columns {list(df.columns)}; it needs x and y offset columns."
        )
    out = pd.DataFrame({"x": df[xcol].to_numpy(np.float64), "y": df[ycol].to_numpy(np.float64)})
    out.index = df[fov].astype(str).to_numpy()
    return out


def alignment_from_offset(
    x_offset: float,
    y_offset: float,
    image_height: float | None = None,
    flip_y: bool = False,
    pixel_size: float = 1.0,
) -> Alignment:
    """Alignment of a FOV image whose top-left pixel sits at a global offset.

    With ``flip_y`` (CosMx: global y grows upwards, image rows downwards), row ``r`` is at
    ``y = y_offset + (image_height - r) * pixel_size``.
    """
    if flip_y:
        if image_height is None:
            raise InputError("flipping y needs the image height.")
        return Alignment(
            (-pixel_size, pixel_size), (y_offset + image_height * pixel_size, x_offset)
        )
    return Alignment((pixel_size, pixel_size), (y_offset, x_offset))


def label_ids_from_names(names: Sequence[str], obs: pd.DataFrame | None = None) -> np.ndarray:
    """Label id of each cell: an obs label column if present, else the trailing integer of the name.

    Cells without an id get ``-1``.
    """
    if obs is not None:
        for col in LABEL_COLUMNS:
            if col in obs.columns:
                ids = pd.to_numeric(obs[col], errors="coerce").to_numpy(np.float64)
                return np.where(np.isfinite(ids), ids, -1).astype(np.int64)
    out = np.full(len(names), -1, dtype=np.int64)
    for i, n in enumerate(names):
        m = _TRAILING_INT.search(str(n))
        if m:
            out[i] = int(m.group(1))
    return out


def label_centroids(labels: np.ndarray) -> pd.DataFrame:
    """Centroid ``(row, col)`` of every non-zero label, indexed by label id."""
    lab = np.asarray(labels)
    rows, cols = np.nonzero(lab)
    flat = lab[rows, cols].astype(np.int64)
    n = int(flat.max()) + 1 if flat.size else 1
    count = np.bincount(flat, minlength=n).astype(np.float64)
    r = np.bincount(flat, weights=rows.astype(np.float64), minlength=n)
    c = np.bincount(flat, weights=cols.astype(np.float64), minlength=n)
    ids = np.flatnonzero(count)
    ids = ids[ids > 0]
    return pd.DataFrame({"row": r[ids] / count[ids], "col": c[ids] / count[ids]}, index=ids)


def fit_alignment(
    labels: np.ndarray, coords_yx: np.ndarray, ids: np.ndarray, min_cells: int = 3
) -> Alignment:
    """Fit scale and translate per axis from cells whose label id is known (least squares).

    Parameters
    ----------
    labels
        2D label image.
    coords_yx
        ``(n, 2)`` cell coordinates in the points frame.
    ids
        Label id of each cell (``-1`` unknown), e.g. from :func:`label_ids_from_names`.
    min_cells
        Fewest matched cells needed.
    """
    cent = label_centroids(labels)
    ids = np.asarray(ids, dtype=np.int64)
    ok = (ids > 0) & np.isin(ids, cent.index.to_numpy())
    if ok.sum() < min_cells:
        raise InputError(
            f"only {int(ok.sum())} cells have an id found in the label image (need {min_cells}); "
            "enter the scale and offsets by hand or use the FOV offsets."
        )
    rc = cent.loc[ids[ok], ["row", "col"]].to_numpy()
    yx = np.asarray(coords_yx, dtype=np.float64)[ok]
    scale, trans = [], []
    for a in range(2):
        A = np.c_[rc[:, a], np.ones(len(rc))]
        (s, t), *_ = np.linalg.lstsq(A, yx[:, a], rcond=None)
        if abs(s) < 1e-12:
            raise InputError("the matched cells do not spread along the image; cannot fit a scale.")
        scale.append(float(s))
        trans.append(float(t))
    align = Alignment((scale[0], scale[1]), (trans[0], trans[1]))
    resid = align.to_world(rc) - yx
    return Alignment(align.scale, align.translate, float(np.sqrt((resid**2).sum(1).mean())))


def label_at(labels: np.ndarray, alignment: Alignment, yx: Sequence[float]) -> int:
    """Label id under a points-frame position (0 outside the image or on background)."""
    r, c = np.floor(alignment.to_image(np.asarray(yx[-2:], dtype=np.float64)) + 0.5).astype(
        np.int64
    )
    if 0 <= r < labels.shape[0] and 0 <= c < labels.shape[1]:
        return int(labels[r, c])
    return 0


def paint_labels(
    labels: np.ndarray, ids: np.ndarray, vals: np.ndarray, fill: float = np.nan
) -> np.ndarray:
    """Image of ``vals`` painted onto the label image (label id -> value; ``fill`` elsewhere).

    Parameters
    ----------
    labels
        2D label image.
    ids
        Label id of each value (``-1`` or ids not in the image are ignored).
    vals
        One value per id.
    fill
        Value of background and of labels without a cell.
    """
    ids = np.asarray(ids, dtype=np.int64)
    vals = np.asarray(vals, dtype=np.float32)
    top = int(labels.max()) if labels.size else 0
    lut = np.full(top + 1, fill, dtype=np.float32)
    ok = (ids > 0) & (ids <= top)
    lut[ids[ok]] = vals[ok]
    return lut[labels]


def rows_by_label(ids: np.ndarray) -> dict[int, int]:
    """Row of each label id (first cell wins) for click look-ups."""
    out: dict[int, int] = {}
    for row, i in enumerate(np.asarray(ids, dtype=np.int64)):
        if i > 0 and int(i) not in out:
            out[int(i)] = row
    return out


def guess_fov(filename: str | Path, fovs: Sequence[str]) -> str | None:
    """The FOV a file belongs to from the last number in its name (``CellLabels_F002.tif`` -> 2)."""
    numbers = re.findall(r"\d+", Path(filename).stem)
    if not numbers:
        return None
    last = int(numbers[-1])
    for f in fovs:
        if str(f) == numbers[-1]:
            return str(f)
        try:
            if int(float(str(f))) == last:
                return str(f)
        except ValueError:
            m = _TRAILING_INT.search(str(f))
            if m and int(m.group(1)) == last:
                return str(f)
    return None
