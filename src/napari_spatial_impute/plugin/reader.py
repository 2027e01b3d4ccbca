"""napari reader: an AnnData ``.h5ad`` file or a SpatialData ``.zarr`` store becomes layers.

An ``.h5ad`` file becomes one Points layer, every sample in it (samples and FOVs features). A SpatialData store
becomes its images and labels (one coordinate system, lazily read, per-FOV tiles stitched into one
layer each) under the cells of its table: the results table written by this plugin when there is
one (imputed genes to explore), else the store's table of cells.

Spatial data (``obsm['spatial']``) and mapping results open in tissue coordinates, napari axis
order ``(y, x)`` / ``(z, y, x)``; a result is coloured by its predicted cluster and keeps its
imputed genes in ``layer.metadata['spatial_impute']['adata']``. A reference with
``obsm['X_umap']`` opens at its UMAP. Anything else returns ``None`` so napari can try other
readers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_spatial_impute._errors import first_line
from napari_spatial_impute.viz.layers import (
    META_KEY,
    LayerData,
    adata_layers,
    plugin_meta,
    source_of,
)

ReaderFunction = Callable[[Any], list[LayerData]]


def _looks_like_anndata(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file with AnnData's ``obs``/``var`` groups (cheap check)."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            if not ("obs" in f and "var" in f):
                return False
            obsm = f.get("obsm")
            keys = set(obsm.keys()) if obsm is not None else set()
            return bool(keys & {"spatial", "X_umap"})
    except Exception:
        return False


def napari_get_reader(path: str | list[str]) -> ReaderFunction | None:
    """:func:`read_h5ad_layers` for AnnData files, :func:`read_store_layers` for a store."""
    from napari_spatial_impute.io.sdata import is_store

    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths:
        return None
    if len(paths) == 1 and is_store(paths[0]):
        return read_store_layers
    for p in paths:
        pp = Path(p)
        if pp.suffix.lower() != ".h5ad" or not pp.is_file() or not _looks_like_anndata(pp):
            return None
    return read_h5ad_layers


def read_h5ad_layers(path: str | list[str]) -> list[Any]:
    """Read one or more ``.h5ad`` files into layer-data tuples.

    A file the plugin cannot show (bad input, e.g. cells with NaN coordinates) is reported as
    one napari error notification naming the problem and the fix, not as a traceback, and
    adds no layers; the other files are still read. When no file gives layers the result is
    napari's "nothing to add" value ``[(None,)]``.
    """
    from napari.utils.notifications import show_error

    from napari_spatial_impute._errors import InputError
    from napari_spatial_impute.io.files import read_h5ad
    from napari_spatial_impute.io.lazy import read_result_lazy
    from napari_spatial_impute.io.schema import is_result_file
    from napari_spatial_impute.plugin.sync import hook_current_viewer

    hook_current_viewer()
    paths = [path] if isinstance(path, str | Path) else list(path)
    out: list[LayerData] = []
    for p in paths:
        if already_shown(p):
            continue
        try:
            # a mapping result's genes stay in the file: read one when shown (io.lazy)
            adata = read_result_lazy(p) if is_result_file(p) else read_h5ad(p)
            layers = adata_layers(adata, name=Path(p).stem)
        except InputError as exc:
            show_error(f"{Path(p).name}: {first_line(exc)}")
            continue
        for _, kwargs, _ in layers:
            kwargs["metadata"][META_KEY].update(
                source=source_of(p), origin="reader", stamp=file_stamp(p)
            )
        out.extend(layers)
    return out if out else [(None,)]


def file_stamp(path: str | Path) -> tuple[int, int] | None:
    """``(modification time in ns, size)`` of a file (of a store: its root folder's), or
    ``None``: what tells a file opened again from one changed on disk."""
    p = Path(path)
    parts = [p, p / "tables", p / "zarr.json", p / ".zmetadata"] if p.is_dir() else [p]
    stats = [q.stat() for q in parts if q.exists()]
    if not stats:
        return None
    return (max(int(st.st_mtime_ns) for st in stats), int(stats[0].st_size))


def already_shown(path: str | Path) -> bool:
    """Whether the current viewer shows ``path``'s data, unchanged on disk, already.

    Opening a file already shown adds no copy (napari would name it ``"... [1]"``): its layers
    are selected and one line says so. A file changed on disk since it was opened (or its
    layers' data changed) is opened again, its earlier layers replaced, so the viewer shows
    the file as it is now.
    """
    from napari_spatial_impute.plugin.sync import current_viewer

    viewer = current_viewer()
    source = source_of(path)
    if viewer is None or source is None:
        return False
    shown = [
        lay
        for lay in viewer.layers
        if ("adata" in (md := plugin_meta(lay)) and md.get("source") == source)
        or md.get("store") == source
    ]
    if not shown:
        return False
    stamp = file_stamp(path)
    if stamp is not None and all(
        plugin_meta(lay).get("stamp") in (stamp, list(stamp))
        for lay in shown
        if "adata" in plugin_meta(lay)
    ):
        from napari.utils.notifications import show_info

        viewer.layers.selection = set(shown)
        show_info(f"{Path(path).name} is open already (layer {shown[-1].name!r}): nothing added.")
        return True
    for lay in shown:  # changed on disk: the file as it is now replaces them
        viewer.layers.remove(lay)
    return False


def store_layers(
    path: str | Path, table: str | None = None, coordinate_system: str | None = None
) -> list[LayerData]:
    """Layer data of a store: rasters of the coordinate system under the table's cells.

    Without a ``table``, a results table of this plugin is shown (``spatial_impute`` when there
    are several; in the coordinate system it was mapped in), else the store's table of cells
    (:func:`~napari_spatial_impute.io.sdata.read_spatial`'s defaults).
    """
    from napari_spatial_impute.io.schema import RESULT_TABLE, SDATA_KEY
    from napari_spatial_impute.io.sdata import describe_store, open_store, read_spatial
    from napari_spatial_impute.viz.rasters import raster_layers

    sdata = open_store(path)
    if table is None:
        results = [t for t in describe_store(sdata).tables if t.is_result and t.annotates]
        if results:
            chosen = next((t for t in results if t.name == RESULT_TABLE), results[0])
            table, recorded = chosen.name, chosen.mapped_in
            if coordinate_system is None and recorded in sdata.coordinate_systems:
                coordinate_system = recorded
    adata = read_spatial(sdata, table, coordinate_system)
    cs = adata.uns[SDATA_KEY]["coordinate_system"]
    rasters = raster_layers(sdata, cs, store=str(Path(path).resolve()))
    cells = adata_layers(adata, name=Path(path).stem)
    for _, kwargs, _ in cells:
        kwargs["metadata"][META_KEY].update(
            source=source_of(path), origin="reader", stamp=file_stamp(path)
        )
    return [*rasters, *cells]


def read_store_layers(path: str | list[str]) -> list[Any]:
    """napari reader of a SpatialData store; bad input is one error notification, no layers."""
    from napari.utils.notifications import show_error

    from napari_spatial_impute._errors import InputError
    from napari_spatial_impute.plugin.sync import hook_current_viewer

    hook_current_viewer()
    p = path[0] if isinstance(path, list) else path
    if already_shown(p):
        return [(None,)]
    try:
        return store_layers(p)
    except InputError as exc:
        show_error(f"{Path(p).name}: {first_line(exc)}")
        return [(None,)]
