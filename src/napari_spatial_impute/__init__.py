"""napari-spatial-impute: impute a whole transcriptome onto targeted in-situ spatial data.

The science core is plain Python/torch (no Qt)::

    import napari_spatial_impute as nsi

    ref, sp = nsi.load_merfish_hypothalamus()
    result = nsi.map_cells_to_space(ref, sp, cluster_key="cell_type")  # the map the data chose
    imputed = nsi.project_genes(result, ["Gad1", "Slc17a6"])
    probs = nsi.project_cell_annotations(result)
    adata = nsi.result_to_anndata(result)  # everything, ready for .write_h5ad

    # a SpatialData store: cells placed in a coordinate system, results back as a new table
    sp = nsi.read_spatial("section.zarr", table="table", coordinate_system="global")
    result = nsi.map_cells_to_space(ref, sp, cluster_key="cell_type")
    nsi.write_result_to_store(result, "section.zarr")   # table 'spatial_impute'
    # an atlas: each section on its own, on a Dask cluster, written batch by batch
    nsi.map_batches(ref, "atlas.h5ad", "section", "atlas.zarr", workers=2, cluster_key="cell_type")
    cv = nsi.cross_validate(ref, sp, folds=10)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari_spatial_impute._version import __version__

# Public names, imported on first use: napari's plugin discovery and the CLI's start-up (where a
# Ctrl-C must give one line, not a traceback) import this package without paying for torch.
_EXPORTS: dict[str, str] = {
    "InputError": "._errors",
    "InputWarning": "._errors",
    "MappingCancelled": "._errors",
    "MemoryEstimateError": "._errors",
    "load_merfish_hypothalamus": ".io.datasets",
    "EpochInfo": ".core.engine.mapper",
    "TangramMapper": ".core.engine.mapper",
    "cross_validate": ".core.evaluate",
    "summarize_cv": ".core.evaluate",
    "validate_cell_types": ".core.evaluate",
    "GenePlan": ".core.genes",
    "plan_genes": ".core.genes",
    "find_fov_key": ".io.files",
    "read_h5ad": ".io.files",
    "validate_adata": ".io.files",
    "write_h5ad_atomic": ".io.files",
    "MappingResult": ".core.result",
    "map_cells_to_space": ".core.mapping",
    "map_batches": ".core.batch_run",
    "project_cell_annotations": ".core.project",
    "project_genes": ".core.project",
    "result_to_anndata": ".core.export",
    "write_result_to_store": ".core.export",
    "read_spatial": ".io.sdata",
}

if TYPE_CHECKING:
    from napari_spatial_impute._errors import (
        InputError,
        InputWarning,
        MappingCancelled,
        MemoryEstimateError,
    )
    from napari_spatial_impute.core.batch_run import map_batches
    from napari_spatial_impute.core.engine.mapper import EpochInfo, TangramMapper
    from napari_spatial_impute.core.evaluate import (
        cross_validate,
        summarize_cv,
        validate_cell_types,
    )
    from napari_spatial_impute.core.export import result_to_anndata, write_result_to_store
    from napari_spatial_impute.core.genes import GenePlan, plan_genes
    from napari_spatial_impute.core.mapping import map_cells_to_space
    from napari_spatial_impute.core.project import project_cell_annotations, project_genes
    from napari_spatial_impute.core.result import MappingResult
    from napari_spatial_impute.io.datasets import load_merfish_hypothalamus
    from napari_spatial_impute.io.files import (
        find_fov_key,
        read_h5ad,
        validate_adata,
        write_h5ad_atomic,
    )
    from napari_spatial_impute.io.sdata import read_spatial


def __getattr__(name: str) -> Any:
    from importlib import import_module
    from importlib.util import find_spec

    module = _EXPORTS.get(name)
    if module is None:
        # submodules (``nsi.datasets``, ``nsi.io``) as the eager imports used to bind them
        if not name.startswith("__") and find_spec(f"{__name__}.{name}") is not None:
            return import_module(f".{name}", __name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "EpochInfo",
    "GenePlan",
    "InputError",
    "InputWarning",
    "MappingCancelled",
    "MappingResult",
    "MemoryEstimateError",
    "TangramMapper",
    "__version__",
    "cross_validate",
    "find_fov_key",
    "load_merfish_hypothalamus",
    "map_batches",
    "map_cells_to_space",
    "plan_genes",
    "project_cell_annotations",
    "project_genes",
    "read_h5ad",
    "read_spatial",
    "result_to_anndata",
    "summarize_cv",
    "validate_adata",
    "validate_cell_types",
    "write_h5ad_atomic",
    "write_result_to_store",
]
