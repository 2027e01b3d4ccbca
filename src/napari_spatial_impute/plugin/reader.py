"""napari reader: an AnnData ``.h5ad`` file becomes Points layers, one per sample (FOVs a feature).

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

from napari_spatial_impute.viz.layers import META_KEY, LayerData, adata_layers, source_of

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
    """Return :func:`read_h5ad_layers` when ``path`` is an AnnData file this plugin can show."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths:
        return None
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
    from napari_spatial_impute.plugin.sync import hook_current_viewer

    hook_current_viewer()
    paths = [path] if isinstance(path, str | Path) else list(path)
    out: list[LayerData] = []
    for p in paths:
        try:
            adata = read_h5ad(p)
            layers = adata_layers(adata, name=Path(p).stem)
        except InputError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            show_error(f"{Path(p).name}: {first}")
            continue
        for _, kwargs, _ in layers:
            kwargs["metadata"][META_KEY].update(source=source_of(p), origin="reader")
        out.extend(layers)
    return out if out else [(None,)]
