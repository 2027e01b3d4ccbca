"""SpatialData stores (``.zarr``) as the spatial input.

A store holds a cell table (AnnData whose ``uns['spatialdata_attrs']`` names the ``region``
elements it annotates, the ``region_key`` column saying which element each row annotates and the
``instance_key`` column with the cell's id in that element), the segmentation (labels or shapes),
images, points, and one or more coordinate systems. :func:`read_spatial` turns one table into the
AnnData the core takes:

* ``obsm['spatial']`` are the cells' ``(x, y)`` in the chosen coordinate system, taken from the
  annotated element's geometry (circle centres, polygon centroids, label centroids) and its
  transformation, so that cells line up with the images and labels of that coordinate system.
  A table's own ``obsm['spatial']`` carries no coordinate system (CosMx stores local FOV pixels
  there, Xenium microns), so it is used only when the annotated element is not in the store; it
  is kept as ``obsm['spatial_table']``.
* cells whose element has no transformation to the coordinate system are left out (a per-FOV
  coordinate system shows that FOV's cells), never silently: one warning counts them and names
  their regions; ``obs['fov']`` is added from the region when a table annotates several elements
  (one per FOV) and has no FOV column of its own.
* a damaged or ambiguous store is refused before any mapping work, in one line naming the
  problem and the fix (:mod:`napari_spatial_impute.io._sdata_checks`): a file of the table or of
  a labels element that cannot be decoded, repeated instance ids or cell names, ... A store that
  is read can take its results table back.
* ``uns['spatialdata']`` records where the cells came from (store, table, coordinate system,
  region/instance keys), for writing results back (:mod:`napari_spatial_impute.io.sdata_write`)
  and for showing the store's images under the cells.

spatialdata is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputError, InputWarning, first_line
from napari_spatial_impute.io import _sdata_checks as _checks
from napari_spatial_impute.io.schema import SDATA_KEY, UNS_KEY

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: Groups of a SpatialData store's root; a folder with one of them (and zarr metadata) is a store.
ELEMENT_GROUPS = ("images", "labels", "shapes", "points", "tables")
#: Coordinate system chosen when several are possible and it is one of them.
DEFAULT_CS = "global"
#: Name of the FOV column added from the region when a table annotates one element per FOV.
FOV_FROM_REGION = "fov"
#: Label images are read in blocks of at most this many pixels a side (memory stays bounded).
LABEL_BLOCK = 4096
#: Ids up to this are counted per block in arrays of this length (larger ids are sorted).
MAX_COUNTED_ID = 1 << 22


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder that looks like a SpatialData store (cheap: no reading)."""
    p = Path(path)
    if not p.is_dir():
        return False
    if not ((p / "zarr.json").is_file() or (p / ".zgroup").is_file()):
        return False
    return any((p / g).is_dir() for g in ELEMENT_GROUPS)


def open_store(path: str | os.PathLike[str], role: str = "spatial") -> SpatialData:
    """Open a store lazily (images, labels and points stay on disk); one line when it cannot be."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{role} store {str(p)!r} does not exist; check the path.")
    if not is_store(p):
        raise InputError(
            f"{str(p)!r} is not a SpatialData store (a .zarr folder with tables/, labels/, "
            "images/...); give an .h5ad file or a store written by spatialdata (sdata.write)."
        )
    from napari_spatial_impute.io.store_journal import repair

    try:
        repair(p)  # a write into the store that died: rolled back or finished first
    except OSError as exc:  # e.g. the store's folder vanished meanwhile: read what is there
        warnings.warn(
            f"store {str(p)!r} could not be checked for an unfinished write ({first_line(exc)}).",
            InputWarning,
            stacklevel=2,
        )
    import logging

    import spatialdata as sd

    quiet = logging.getLogger("ome_zarr")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "no parent found for Label" for every labels element
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # tables stay on disk: a store may hold results tables of many GB; the one chosen
            # is read by load_table
            return sd.read_zarr(p, selection=("images", "labels", "points", "shapes"))
    except Exception as exc:  # spatialdata/zarr/ome-zarr raise many types for a broken store
        first = first_line(exc)
        raise InputError(
            f"cannot read SpatialData store {str(p)!r} ({first}); check that it was written by "
            "spatialdata 0.4 or newer (spatialdata.read_zarr must open it)."
        ) from None
    finally:
        quiet.setLevel(level)


@dataclass(frozen=True)
class TableInfo:
    """What a table annotates: its region elements and the keys linking rows to their cells."""

    name: str
    n_obs: int
    regions: tuple[str, ...]
    region_key: str | None
    instance_key: str | None
    is_result: bool
    coordinate_systems: tuple[str, ...] = field(default=())
    #: The coordinate system a results table's cells were mapped in (``None`` for others).
    mapped_in: str | None = None

    @property
    def annotates(self) -> bool:
        return bool(self.regions) and bool(self.region_key) and bool(self.instance_key)


@dataclass(frozen=True)
class StoreInfo:
    """A store's tables and coordinate systems, for choosing what to read (GUI combos, CLI)."""

    path: str
    tables: tuple[TableInfo, ...]
    coordinate_systems: tuple[str, ...]

    def table(self, name: str) -> TableInfo:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def cell_tables(self) -> tuple[TableInfo, ...]:
        """Tables of cells the plugin can map (they annotate elements; our results left out)."""
        return tuple(t for t in self.tables if t.annotates and not t.is_result)


def _regions(attrs: dict[str, Any]) -> tuple[str, ...]:
    region = attrs.get("region")
    if region is None:
        return ()
    values = [region] if isinstance(region, str) else list(np.asarray(region).ravel())
    return tuple(dict.fromkeys(str(v) for v in values))  # a region listed twice is one region


def _table_info(
    sdata: SpatialData, name: str, n_obs: int, uns: Any, read: Any = lambda v: v
) -> TableInfo:
    """A table's description from its size and ``uns`` (an AnnData's, or a stored table's zarr
    group read entry by entry with ``read``): what it annotates, where, and whether it is ours."""
    attrs = read(uns["spatialdata_attrs"]) if "spatialdata_attrs" in uns else {}
    attrs = dict(attrs) if isinstance(attrs, dict) else {}
    source = read(uns[SDATA_KEY]) if SDATA_KEY in uns else {}
    mapped_in = source.get("coordinate_system") if isinstance(source, dict) else None
    regions = _regions(attrs)
    systems: list[str] = []
    for region in regions:
        systems += [c for c in element_cs(sdata, region) if c not in systems]
    return TableInfo(
        name=name,
        n_obs=n_obs,
        regions=regions,
        region_key=attrs.get("region_key"),
        instance_key=attrs.get("instance_key"),
        is_result=UNS_KEY in uns,
        coordinate_systems=tuple(sorted(systems)),
        mapped_in=str(mapped_in) if mapped_in else None,
    )


def _stored_table_info(sdata: SpatialData, name: str) -> TableInfo:
    """A stored table's description from its metadata (no matrix is read)."""
    import zarr
    from anndata.io import read_elem

    group: Any = zarr.open_group(str(Path(sdata.path) / "tables" / name), mode="r")
    obs: Any = group["obs"]
    n_obs = int(obs[obs.attrs.get("_index", "_index")].shape[0])
    return _table_info(sdata, name, n_obs, group["uns"] if "uns" in group else {}, read_elem)


def _stored_tables(sdata: SpatialData) -> list[str]:
    folder = Path(sdata.path) / "tables" if sdata.path is not None else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if not p.name.startswith(".") and ((p / "zarr.json").is_file() or (p / ".zgroup").is_file())
    )


def _store_path(sdata: SpatialData) -> Path | None:
    return Path(sdata.path) if sdata.path is not None else None


def load_table(sdata: SpatialData, name: str) -> ad.AnnData:
    """Table ``name``: the one in memory, else read from the store (only that table); one line
    naming the file when the store is damaged."""
    if name in sdata.tables:
        return sdata.tables[name]
    assert sdata.path is not None
    from napari_spatial_impute.io.lazy import read_result_lazy
    from napari_spatial_impute.io.schema import is_result_file

    group = Path(sdata.path) / "tables" / name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # a results table's genes stay in the store: read one when shown (io.lazy)
            table = read_result_lazy(group) if is_result_file(group) else ad.read_zarr(group)
    except MemoryError:
        raise
    except Exception as exc:  # numcodecs/zarr/anndata raise many types for a damaged table
        raise _checks.unreadable(
            _store_path(sdata), f"table {name!r}", f"tables/{name}", exc
        ) from None
    attrs = table.uns.get("spatialdata_attrs")
    if isinstance(attrs, dict) and isinstance(attrs.get("region"), np.ndarray):
        attrs["region"] = attrs["region"].tolist()
    return table


def coordinate_systems_of(element: Any) -> tuple[str, ...]:
    """Coordinate systems a spatial element has a transformation to."""
    from spatialdata.transformations import get_transformation

    found = get_transformation(element, get_all=True)
    return tuple(found) if isinstance(found, dict) else ()


def element_cs(sdata: SpatialData, name: str) -> tuple[str, ...]:
    """Coordinate systems the element ``name`` has a transformation to (``()`` when absent)."""
    try:
        element = sdata[name]
    except KeyError:
        return ()
    return coordinate_systems_of(element)


def cs_matrix(element: Any, coordinate_system: str, axes: tuple[str, str] = ("x", "y")) -> Any:
    """The element's transformation to ``coordinate_system`` as a 3x3 affine on ``axes``
    (``KeyError`` when it has none)."""
    from spatialdata.transformations import get_transformation

    if coordinate_system not in coordinate_systems_of(element):
        raise KeyError(f"the element has no transformation to {coordinate_system!r}")
    t = get_transformation(element, to_coordinate_system=coordinate_system)
    return np.asarray(t.to_affine_matrix(input_axes=axes, output_axes=axes), dtype=np.float64)


def element_levels(element: Any) -> list[Any]:
    """The (dask) arrays of an image or labels element: one, or one per scale of a multiscale
    ``DataTree`` (``scale0`` first)."""
    from xarray import DataTree

    if isinstance(element, DataTree):
        names = sorted(element.children, key=lambda s: int("".join(filter(str.isdigit, s)) or 0))
        return [next(iter(element[n].data_vars.values())).data for n in names]
    return [element.data]


def describe_store(sdata: SpatialData) -> StoreInfo:
    """The store's tables (what each annotates, in which coordinate systems) and systems.

    Tables in memory are described as they are; the store's other tables from their metadata on
    disk, without reading their matrices.
    """
    infos = {str(n): _table_info(sdata, str(n), t.n_obs, t.uns) for n, t in sdata.tables.items()}
    for name in _stored_tables(sdata):
        if name not in infos:
            try:
                infos[name] = _stored_table_info(sdata, name)
            except Exception as exc:  # zarr/anndata raise many types for a broken group
                what, node = f"table {name!r}", f"tables/{name}"
                raise _checks.damaged(_store_path(sdata), what, node, exc) or InputError(
                    f"table {name!r} of the store cannot be read ({first_line(exc)}); remove it or "
                    "write it again with spatialdata."
                ) from None
    return StoreInfo(
        path=str(sdata.path) if sdata.path is not None else "",
        tables=tuple(infos[n] for n in sorted(infos)),
        coordinate_systems=tuple(sorted(str(c) for c in sdata.coordinate_systems)),
    )


def choose_table(info: StoreInfo, table: str | None) -> TableInfo:
    """The table to read: the one named, else the store's only table of cells."""
    names = [t.name for t in info.tables]
    if not names:
        raise InputError(
            f"store {info.path!r} has no tables; add the cell table with spatialdata "
            "(sdata.tables['table'] = TableModel.parse(adata, region=..., region_key=..., "
            "instance_key=...)) or give an .h5ad file."
        )
    if table is not None:
        if table not in names:
            raise InputError(
                f"store has no table {table!r}; its tables are {', '.join(names)} (--table)."
            )
        chosen = info.table(table)
    else:
        cells = info.cell_tables
        if len(cells) > 1:
            raise InputError(
                f"store has several cell tables ({', '.join(t.name for t in cells)}); choose "
                "one with --table (table= in the API)."
            )
        chosen = cells[0] if cells else info.tables[0]
    if not chosen.annotates:
        raise InputError(
            f"table {chosen.name!r} does not say which cells it annotates (no region, region_key "
            "and instance_key in uns['spatialdata_attrs']); annotate it with spatialdata's "
            "TableModel.parse(table, region=<labels or shapes>, region_key=..., instance_key=...)."
        )
    return chosen


def choose_coordinate_system(
    info: StoreInfo, table: TableInfo, coordinate_system: str | None
) -> str:
    """The coordinate system to place cells in: the one named, else ``global`` or the only one."""
    if coordinate_system is not None:
        if coordinate_system not in info.coordinate_systems:
            raise InputError(
                f"store has no coordinate system {coordinate_system!r}; it has "
                f"{', '.join(info.coordinate_systems) or 'none'} (--coordinate-system)."
            )
        if coordinate_system not in table.coordinate_systems:
            raise InputError(
                f"no cell of table {table.name!r} is in coordinate system {coordinate_system!r}; "
                f"its cells are in {', '.join(table.coordinate_systems) or 'none'} "
                "(--coordinate-system)."
            )
        return coordinate_system
    if not table.coordinate_systems:
        return DEFAULT_CS  # elements absent: the table's own obsm['spatial'] is the only choice
    if DEFAULT_CS in table.coordinate_systems:
        return DEFAULT_CS
    return table.coordinate_systems[0]


# --------------------------------------------------------------------------- cell coordinates
def label_centroids(labels: Any) -> pd.DataFrame:
    """Centroids of every nonzero label of a 2D label image, read block by block.

    Pixel index ``i`` covers ``[i, i + 1)`` in the element's own coordinates (spatialdata's
    convention), so a centroid is the mean pixel index plus 0.5. Returns a frame indexed by
    label id with columns ``x``, ``y`` and ``n_pixels``.
    """
    import dask.array as da

    arr = labels if isinstance(labels, da.Array) else da.asarray(labels)  # type: ignore[no-untyped-call]
    if arr.ndim != 2:
        raise InputError(
            f"label image has {arr.ndim} dimensions; only 2D labels (y, x) are supported."
        )
    arr = arr.rechunk(tuple(min(LABEL_BLOCK, max(c)) for c in arr.chunks))
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in arr.chunks]
    parts = []
    for bi, bj in np.ndindex(*arr.numblocks):
        block = np.asarray(arr.blocks[bi, bj].compute())
        ids, counts, sum_y, sum_x = _block_sums(block)
        if ids.size:
            parts.append(
                pd.DataFrame(
                    {
                        "id": ids,
                        "n_pixels": counts,
                        "sum_y": sum_y + starts[0][bi] * counts,
                        "sum_x": sum_x + starts[1][bj] * counts,
                    }
                )
            )
    if not parts:
        return pd.DataFrame({"x": [], "y": [], "n_pixels": []})
    total = pd.concat(parts).groupby("id").sum()
    return pd.DataFrame(
        {
            "x": total["sum_x"] / total["n_pixels"] + 0.5,
            "y": total["sum_y"] / total["n_pixels"] + 0.5,
            "n_pixels": total["n_pixels"].astype(np.int64),
        },
        index=total.index,
    )


def _block_sums(block: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(ids, pixel counts, sum of rows, sum of columns)`` of the nonzero labels of a block.

    Small non-negative ids (the usual case: ids numbered per FOV or per section) are counted
    in one pass (``bincount``); others are sorted (``unique``).
    """
    if not np.issubdtype(block.dtype, np.integer):
        if not np.array_equal(block, np.round(block)):
            raise InputError(
                "label image holds fractional values; labels must be whole cell ids (cast the "
                "segmentation to integers)."
            )
        block = block.astype(np.int64)
    flat = block.ravel()
    if flat.size == 0:
        return (np.empty(0, dtype=np.int64),) * 4
    h, w = block.shape
    top, low = int(flat.max()), int(flat.min())
    if low >= 0 and top <= min(4 * flat.size, MAX_COUNTED_ID):
        counts = np.bincount(flat, minlength=top + 1)
        sum_y = np.bincount(flat, weights=np.repeat(np.arange(h, dtype=np.float64), w))
        sum_x = np.bincount(flat, weights=np.tile(np.arange(w, dtype=np.float64), h))
        ids = np.flatnonzero(counts)
        ids = ids[ids != 0]
        return ids, counts[ids], sum_y[ids], sum_x[ids]
    rows, cols = np.nonzero(block)
    ids, inverse, counts = np.unique(block[rows, cols], return_inverse=True, return_counts=True)
    return ids, counts, np.bincount(inverse, weights=rows), np.bincount(inverse, weights=cols)


def element_xy(sdata: SpatialData, name: str) -> pd.DataFrame:
    """``x``, ``y`` of every cell of element ``name`` in the element's own coordinates."""
    from geopandas import GeoDataFrame
    from spatialdata.models import Labels2DModel, Labels3DModel, get_model

    element = sdata[name]
    if isinstance(element, GeoDataFrame):
        geometry = element.geometry
        if len(element) and (geometry.isna().all() or geometry.is_empty.all()):
            raise InputError(
                f"shapes element {name!r} has no geometry; write circles or polygons for its "
                "cells (ShapesModel.parse) or annotate the labels instead."
            )
        kinds = set(geometry.geom_type.dropna().unique())
        xy = (
            geometry.get_coordinates().to_numpy()
            if kinds == {"Point"}
            else geometry.centroid.get_coordinates().to_numpy()
        )
        if len(xy) != len(element):
            raise InputError(
                f"shapes element {name!r} has empty or missing geometries; drop those rows or "
                "rebuild the shapes."
            )
        if not element.index.is_unique:
            dup = element.index[element.index.duplicated()][:3].tolist()
            raise InputError(
                f"shapes element {name!r} has repeated cell ids (e.g. {dup}); give each shape its "
                "own id (the index the table's instance_key refers to)."
            )
        return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}, index=element.index)
    model = get_model(element)
    if model in (Labels2DModel, Labels3DModel):
        try:
            return label_centroids(element_levels(element)[0])[["x", "y"]]
        except (InputError, MemoryError):
            raise
        except Exception as exc:  # a chunk that cannot be decoded: RuntimeError, ValueError...
            what = f"labels element {name!r}"
            raise _checks.unreadable(_store_path(sdata), what, f"labels/{name}", exc) from None
    raise InputError(
        f"the table annotates {name!r}, a {getattr(model, '__name__', model)} element; only "
        "labels and shapes (cells) can be mapped."
    )


def _to_cs(sdata: SpatialData, name: str, xy: np.ndarray, cs: str) -> np.ndarray:
    m = cs_matrix(sdata[name], cs)
    return np.asarray(xy @ m[:2, :2].T + m[:2, 2], dtype=np.float64)


def _instance_index(values: pd.Series, index: pd.Index) -> np.ndarray:
    """Row of each instance id in ``index`` (-1 when absent), ids compared as ints or text."""
    pos = index.get_indexer(pd.Index(values))
    if (pos < 0).all() and len(values):
        pos = pd.Index(index.astype(str)).get_indexer(pd.Index(values.astype(str)))
    return np.asarray(pos)


def _fov_from_region(adata: ad.AnnData, region_key: str, n_regions: int) -> None:
    from napari_spatial_impute.io.files import find_fov_key

    if n_regions > 1 and FOV_FROM_REGION not in adata.obs and find_fov_key(adata) is None:
        regions = adata.obs[region_key].astype(str)
        adata.obs[FOV_FROM_REGION] = pd.Categorical(regions.map(_short_names(regions.unique())))


def _short_names(names: Any) -> dict[str, str]:
    """Region names without the ending all share (``fov2_labels`` -> ``fov2``), when still unique."""
    names = [str(n) for n in names]
    suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
    short = [n[: len(n) - len(suffix)].rstrip("_-. ") for n in names]
    if all(short) and len(set(short)) == len(short):
        return dict(zip(names, short, strict=True))
    return {n: n for n in names}


def read_spatial(
    store: str | os.PathLike[str] | SpatialData,
    table: str | None = None,
    coordinate_system: str | None = None,
) -> ad.AnnData:
    """Read a store's cell table as spatial data placed in one coordinate system.

    Every problem is found here, before any mapping work, as one line (:class:`InputError`):
    a damaged table or labels element (naming the file that cannot be decoded), names
    spatialdata refuses, an instance id repeated within a region or empty, a cell name repeated,
    a region named by two elements, no cell in the coordinate system. A store that passes can
    take its results table back (:func:`~napari_spatial_impute.core.export.write_result_to_store`).
    Cells left out are counted in an :class:`InputWarning` naming why (their region is not
    placed in the coordinate system, is not one the table annotates, or lacks their id).

    Parameters
    ----------
    store
        Path of a SpatialData ``.zarr`` store (or an opened ``SpatialData``).
    table
        Table to read; default the store's only table of cells.
    coordinate_system
        Where cells are placed; default ``global``, else the table's only one (else its first).

    Returns
    -------
    AnnData with ``obsm['spatial']`` in the coordinate system and ``uns['spatialdata']`` naming
    the source (see the module docstring).
    """
    import spatialdata as sd

    sdata = store if isinstance(store, sd.SpatialData) else open_store(store)
    info = describe_store(sdata)
    chosen = choose_table(info, table)
    cs = choose_coordinate_system(info, chosen, coordinate_system)
    assert chosen.region_key is not None and chosen.instance_key is not None
    t = load_table(sdata, chosen.name)
    region_key, instance_key = chosen.region_key, chosen.instance_key
    for key in (region_key, instance_key):
        if key not in t.obs:
            raise InputError(
                f"table {chosen.name!r} has no obs column {key!r} named by its "
                "spatialdata_attrs; re-annotate it with TableModel.parse."
            )
    _checks.check_table_names(t, chosen.name)
    _checks.check_region_names(_store_path(sdata), chosen.regions)
    regions = t.obs[region_key].astype(str).to_numpy()
    systems = {name: element_cs(sdata, name) for name in chosen.regions}
    kept = _checks.left_out(chosen.name, cs, regions, systems, info.coordinate_systems)
    _checks.check_cells(t.obs, chosen.name, region_key, instance_key, np.flatnonzero(kept))
    xy = np.full((t.n_obs, 2), np.nan)
    rows_of = _rows_by_region(regions)
    for name in chosen.regions:
        rows = rows_of.get(name, np.empty(0, dtype=np.intp))
        rows = rows[kept[rows]]
        if rows.size == 0:
            continue
        if not systems[name]:
            xy[rows] = _table_xy(t, chosen.name, name, rows)
            continue
        cells = element_xy(sdata, name)
        pos = _instance_index(t.obs[instance_key].iloc[rows], cells.index)
        if (pos < 0).all():
            sample = ", ".join(map(str, t.obs[instance_key].iloc[rows[:3]]))
            have = ", ".join(map(str, cells.index[:3]))
            raise InputError(
                f"no instance id of table {chosen.name!r} ({instance_key}: {sample}...) is a cell "
                f"of element {name!r} (ids {have}...); check the table's instance_key."
            )
        found = pos >= 0
        local = cells[["x", "y"]].to_numpy()[pos[found]]
        xy[rows[found]] = _to_cs(sdata, name, local, cs)
    placed = kept & np.isfinite(xy).all(axis=1)
    missing = int((kept & ~placed).sum())
    if missing:
        warnings.warn(
            f"{missing} cells of table {chosen.name!r} have no cell in their element; they are "
            "left out (check the table's instance ids against the segmentation).",
            InputWarning,
            stacklevel=2,
        )
    if not placed.any():
        raise InputError(
            f"no cell of table {chosen.name!r} has coordinates in coordinate system {cs!r}; "
            "add the segmentation elements its regions name, or the cells' coordinates."
        )
    used = [name for name in chosen.regions if name in rows_of and placed[rows_of[name]].any()]
    fresh = chosen.name not in sdata.tables  # read from disk here: no one else holds it
    adata = t if fresh and placed.all() else t[placed].copy()
    _checks.whole_ids(adata.obs, instance_key)
    _checks.check_writable(adata.obs, chosen.name, used, region_key, instance_key)
    if "spatial" in adata.obsm:
        adata.obsm["spatial_table"] = np.asarray(adata.obsm["spatial"])
    adata.obsm["spatial"] = xy[placed]
    adata.uns.pop("spatialdata_attrs", None)
    _fov_from_region(adata, region_key, len(used))
    if UNS_KEY in adata.uns and "measured" not in adata.obsm:  # a results table of this plugin
        _restore_measured(sdata, adata, adata.uns.get(SDATA_KEY), region_key, instance_key)
    adata.uns[SDATA_KEY] = {
        "store": str(Path(info.path).resolve()) if info.path else "",
        "table": chosen.name,
        "coordinate_system": cs,
        "region_key": region_key,
        "instance_key": instance_key,
        "regions": list(used),
    }
    return adata


def _restore_measured(
    sdata: SpatialData, adata: ad.AnnData, source: Any, region_key: str, instance_key: str
) -> None:
    """``obsm['measured']`` of a results table read back: the results table leaves the measured
    values in the cell table it was mapped from (``uns['spatialdata']['table']``); they are read
    from there, cell by cell (region and instance id), as :func:`result_to_anndata` holds them
    (float32, one column per spatial gene). Nothing is added when that table is gone or lacks a
    cell."""
    name = source.get("table") if isinstance(source, dict) else None
    if not name or (name not in sdata.tables and name not in _stored_tables(sdata)):
        return
    try:
        cells = load_table(sdata, str(name))
        keys = [cells.obs[region_key].astype(str), cells.obs[instance_key].to_numpy()]
        wanted = [adata.obs[region_key].astype(str), adata.obs[instance_key].to_numpy()]
        pos = pd.MultiIndex.from_arrays(keys).get_indexer(pd.MultiIndex.from_arrays(wanted))
    except (KeyError, ValueError, InputError):
        return
    if (pos < 0).any():
        return
    X = cells.X[pos]
    values = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    adata.obsm["measured"] = pd.DataFrame(
        values.astype(np.float32, copy=False),
        index=adata.obs_names.copy(),
        columns=list(map(str, cells.var_names)),
    )


def _rows_by_region(regions: np.ndarray) -> dict[str, np.ndarray]:
    """Each region's rows (positions), from one pass over the table."""
    return {
        str(k): np.asarray(v)
        for k, v in pd.Series(regions).groupby(regions, sort=False).indices.items()
    }


def _table_xy(t: ad.AnnData, table: str, element: str, rows: np.ndarray) -> np.ndarray:
    """The table's own ``obsm['spatial']`` for cells whose element is not in the store."""
    if "spatial" not in t.obsm:
        raise InputError(
            f"table {table!r} annotates {element!r}, which is not in the store, and has no "
            "obsm['spatial']; add the segmentation element or the cells' coordinates."
        )
    warnings.warn(
        f"element {element!r} is not in the store: its cells are placed by the table's "
        "obsm['spatial'], which may not line up with the store's images.",
        InputWarning,
        stacklevel=3,
    )
    return np.asarray(t.obsm["spatial"])[rows, :2].astype(np.float64)


def spatial_source(adata: ad.AnnData) -> dict[str, Any] | None:
    """Where ``adata`` was read from (``uns['spatialdata']``), or ``None`` for a plain file."""
    src = adata.uns.get(SDATA_KEY)
    return dict(src) if isinstance(src, dict) and src.get("store") else None
