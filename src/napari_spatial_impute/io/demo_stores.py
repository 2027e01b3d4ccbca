"""Small real SpatialData stores built from the shared data folder (``../shared/data``).

* :func:`build_cosmx_lung_store`: CosMx human lung, FOVs 2 and 3 (GiottoData's mini data set):
  per FOV an RGB composite image and a label image, the decoded transcripts as points and the
  cell table, laid out as spatialdata-io's CosMx reader does (one coordinate system per FOV plus
  ``"global"``).
* :func:`build_iss_ca1_store`: in-situ sequencing of mouse hippocampus CA1 (pciSeq): the
  segmentation label image and the cell table, in one coordinate system ``"global"``.

spatialdata and the file readers are imported inside the functions, so importing this module is
cheap. spatialdata puts pixel ``i`` of an image on ``[i, i + 1)`` of its intrinsic coordinates;
every transformation and centroid below follows that convention.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_spatial_impute._errors import InputError

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd
    from numpy.typing import NDArray

#: CosMx crops: FOV -> local x (pixels) of the crop's first column. Both crops cover local
#: y 3000-3648, and image rows run downwards from local y 3648 (see the data folder's README).
COSMX_CROP_X0: dict[int, int] = {2: 4800, 3: 0}
COSMX_CROP_TOP = 3648.0


def _source(data_dir: Path, *parts: str) -> Path:
    """A file of the shared data folder; a one-line error names it when it is missing."""
    path = Path(data_dir).joinpath(*parts)
    if not path.exists():
        raise InputError(
            f"{str(path)!r} is missing; give the shared data folder (see its README.md)."
        )
    return path


def _refuse_existing(out: Path) -> Path:
    out = Path(out)
    if out.exists():
        raise InputError(f"output {str(out)!r} already exists; remove it or choose another path.")
    if not out.parent.is_dir():
        raise InputError(f"output folder {str(out.parent)!r} does not exist; create it first.")
    return out


def _write_store(sdata: Any, out: Path) -> Path:
    """Write ``sdata`` beside ``out`` and rename it into place: a failure leaves no half store."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.zarr")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "zarr v3 autosharding", UserWarning)
            sdata.write(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _instance_ids(names: pd.Index, pattern: str) -> pd.DataFrame:
    """The groups of ``pattern`` in each obs name, as integers (one column per group)."""
    parts = names.to_series().str.extract(pattern)
    bad = parts.isna().any(axis=1)
    if bad.any():
        raise InputError(
            f"cell name {names[bad.to_numpy()][0]!r} does not match {pattern!r}; "
            "the table's obs_names must hold the label ids."
        )
    return parts.astype(np.int64)


def _check_ids_in_labels(ids: NDArray[np.int64], labels: NDArray[Any], what: str) -> None:
    missing = np.setdiff1d(ids, np.unique(labels))
    if missing.size:
        raise InputError(
            f"{missing.size} cells of the {what} table (e.g. id {int(missing[0])}) are not in its "
            "label image; the data folder's files do not belong together."
        )


def _labels(array: NDArray[Any], transformations: dict[str, Any]) -> Any:
    from spatialdata.models import Labels2DModel

    ids = np.asarray(array)
    if ids.min() < 0 or (ids.dtype.kind == "f" and not np.array_equal(ids, np.round(ids))):
        raise InputError("a label image holds negative or fractional values; give integer ids.")
    return Labels2DModel.parse(
        ids.astype(np.uint32), dims=("y", "x"), transformations=transformations
    )


def _table(
    adata: ad.AnnData, region: str | list[str], region_key: str, instance_key: str
) -> ad.AnnData:
    from spatialdata.models import TableModel

    adata.obs[region_key] = adata.obs[region_key].astype("category")
    return TableModel.parse(adata, region=region, region_key=region_key, instance_key=instance_key)


# --- CosMx lung ---------------------------------------------------------------------------------


def _cosmx_fov_offsets(src: Path) -> dict[int, tuple[float, float]]:
    """Each FOV's global offset in pixels: ``{fov: (x, y)}``."""
    import pandas as pd

    table = pd.read_csv(_source(src, "Lung12_fov_positions_file.csv"))
    cols = ["fov", "x_global_px", "y_global_px"]
    return {int(fov): (float(x), float(y)) for fov, x, y in table[cols].itertuples(index=False)}


def _cosmx_pixel_to_global(fov: int, offset: tuple[float, float]) -> tuple[float, float]:
    """The ``(x, y)`` translation from a CosMx crop's pixel grid to the ``"global"`` system.

    ``"global"`` is global pixels with the image's orientation: ``x = x_global_px``,
    ``y = -y_global_px``. Pixel ``(row, col)`` of the crop covers local
    ``x = col + x0 + [0, 1)`` and ``y = 3648 - row - [0, 1)``, and global = FOV offset + local.
    """
    return offset[0] + COSMX_CROP_X0[fov], -COSMX_CROP_TOP - offset[1]


def _cosmx_fov_elements(src: Path, fov: int, offset: tuple[float, float]) -> tuple[Any, Any]:
    """The label image and the RGB composite of one FOV, in its own system and ``"global"``."""
    import imageio.v3 as iio
    import tifffile
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Translation

    def transformations() -> dict[str, Any]:
        tx, ty = _cosmx_pixel_to_global(fov, offset)
        return {f"fov{fov}": Identity(), "global": Translation([tx, ty], axes=("x", "y"))}

    labels = _labels(tifffile.imread(_source(src, f"CellLabels_F{fov:03d}.tif")), transformations())
    rgb = iio.imread(_source(src, "CellComposite", f"CellComposite_F{fov:03d}.jpg"))
    if rgb.shape != (*labels.shape, 3):
        raise InputError(f"the composite of FOV {fov} is not an RGB image on its label grid.")
    image = Image2DModel.parse(
        np.moveaxis(rgb, -1, 0),
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        transformations=transformations(),
    )
    return labels, image


def _cosmx_transcripts(src: Path) -> Any:
    import pandas as pd
    from spatialdata.models import PointsModel
    from spatialdata.transformations import Identity

    tx = pd.read_csv(_source(src, "Lung12_tx_file.csv"))
    points = pd.DataFrame(
        {
            "x": tx["x_global_px"].to_numpy(np.float64),
            "y": -tx["y_global_px"].to_numpy(np.float64),
            "z_plane": tx["z"],  # a column "z" would be taken for a third axis and dropped
            "fov": tx["fov"],
            "cell_ID": tx["cell_ID"],
            "target": pd.Categorical(tx["target"]),
        }
    )
    return PointsModel.parse(
        points,
        coordinates={"x": "x", "y": "y"},
        feature_key="target",
        instance_key="cell_ID",
        transformations={"global": Identity()},
    )


def _cosmx_table(src: Path, labels: dict[int, NDArray[Any]]) -> ad.AnnData:
    """The cell table: obs_names ``fov<N>_c<id>`` give the FOV and the cell's label id."""
    import pandas as pd

    from napari_spatial_impute.io.files import read_h5ad

    adata = read_h5ad(_source(src, "spatial.h5ad"), "CosMx cell table")
    ids = _instance_ids(adata.obs_names, r"^fov(\d+)_c(\d+)$")
    fov, cell = ids[0].to_numpy(), ids[1].to_numpy()
    for n, lab in labels.items():
        _check_ids_in_labels(cell[fov == n], lab, f"CosMx FOV {n}")
    if not set(fov) <= set(labels):
        raise InputError(f"the CosMx table has cells of FOVs {sorted(set(fov))}; expected 2 and 3.")
    adata.obs["fov"] = pd.Categorical(fov.astype(str))
    adata.obs["fov_labels"] = [f"fov{n}_labels" for n in fov]
    adata.obs["cell_ID"] = cell
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    adata.obsm["spatial"] = np.column_stack([xy[:, 0], -xy[:, 1]])
    region = [f"fov{n}_labels" for n in sorted(labels)]
    return _table(adata, region, "fov_labels", "cell_ID")


def build_cosmx_lung_store(data_dir: Path, out: Path) -> Path:
    """Write the CosMx lung data (FOVs 2 and 3) of ``data_dir/cosmx_lung`` as a SpatialData store.

    Elements, as spatialdata-io's CosMx reader lays them out:

    * ``fov2_labels``, ``fov3_labels``: the segmentation (``CellLabels_F00N.tif``, uint32 ids);
    * ``fov2_image``, ``fov3_image``: the RGB composite (``CellComposite_F00N.jpg``, channels
      ``r, g, b``) on the same pixel grid;
    * ``transcripts``: the decoded transcripts (``fov``, ``cell_ID`` (0 = outside cells),
      ``target``, and the file's ``z`` as ``z_plane``: a focal plane index, and spatialdata drops
      a column named ``z`` from 2D points), in ``"global"`` only;
    * ``table``: 120 cells x 980 genes, raw counts, annotating the labels (region key
      ``fov_labels``, instance key ``cell_ID``); ``obs["fov"]`` holds the FOV as text and
      ``obsm["spatial"]`` the centroid (mean transcript position) in ``"global"``.

    Coordinate systems: ``"fov2"`` and ``"fov3"`` (each crop's pixel grid, Identity) and
    ``"global"``: global pixels oriented like the images, ``x = x_global_px``,
    ``y = -y_global_px``; each FOV maps to it by a translation
    (:func:`_cosmx_pixel_to_global`). Every table cell is a label of its FOV (checked; an
    :class:`InputError` otherwise).

    Parameters
    ----------
    data_dir
        The shared data folder (holding ``cosmx_lung/``).
    out
        The ``.zarr`` store to create; it must not exist.

    Returns
    -------
    ``out``.
    """
    from spatialdata import SpatialData

    out = _refuse_existing(out)
    src = Path(data_dir) / "cosmx_lung"
    offsets = _cosmx_fov_offsets(src)
    labels, images = {}, {}
    for fov in COSMX_CROP_X0:
        labels[fov], images[fov] = _cosmx_fov_elements(src, fov, offsets[fov])
    sdata = SpatialData(
        images={f"fov{n}_image": im for n, im in images.items()},
        labels={f"fov{n}_labels": lab for n, lab in labels.items()},
        points={"transcripts": _cosmx_transcripts(src)},
        tables={"table": _cosmx_table(src, {n: lab.to_numpy() for n, lab in labels.items()})},
    )
    return _write_store(sdata, out)


# --- ISS CA1 ------------------------------------------------------------------------------------


def build_iss_ca1_store(data_dir: Path, out: Path) -> Path:
    """Write the ISS CA1 data of ``data_dir/iss_ca1`` as a SpatialData store.

    Elements, in one coordinate system ``"global"`` (the label image's pixels, Identity):

    * ``cells``: the segmentation (``label_image.coo.npz``, 5471 x 7602, uint32 ids);
    * ``table``: 3184 cells x 92 genes, raw counts, annotating ``cells`` (region key ``region``,
      instance key ``cell_id``: the number in obs_names ``cell_<id>``, checked to be a label).

    No image exists for this data set. The h5ad's centroids are the mean pixel indices of each
    cell as ``(x, y) = (column, row)``, with a pixel's centre at its index; ``obsm["spatial"]``
    holds them in ``"global"``, where a pixel's centre is at index + 0.5, so shifted by 0.5.

    Parameters
    ----------
    data_dir
        The shared data folder (holding ``iss_ca1/``).
    out
        The ``.zarr`` store to create; it must not exist.

    Returns
    -------
    ``out``.
    """
    import scipy.sparse as sp
    from spatialdata import SpatialData
    from spatialdata.transformations import Identity

    from napari_spatial_impute.io.files import read_h5ad

    out = _refuse_existing(out)
    src = Path(data_dir) / "iss_ca1"
    cells = sp.load_npz(_source(src, "label_image.coo.npz")).toarray()
    adata = read_h5ad(_source(src, "spatial.h5ad"), "ISS cell table")
    ids = _instance_ids(adata.obs_names, r"^cell_(\d+)$")[0].to_numpy()
    _check_ids_in_labels(ids, cells, "ISS")
    adata.obs["region"] = "cells"
    adata.obs["cell_id"] = ids
    adata.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64) + 0.5
    sdata = SpatialData(
        labels={"cells": _labels(cells, {"global": Identity()})},
        tables={"table": _table(adata, "cells", "region", "cell_id")},
    )
    return _write_store(sdata, out)


__all__ = ["build_cosmx_lung_store", "build_iss_ca1_store"]
