"""napari-spatial-impute: impute a whole transcriptome onto targeted in-situ spatial data.

The science core is plain Python/torch (no Qt)::

    import napari_spatial_impute as nsi

    ref, sp = nsi.load_merfish_hypothalamus()
    result = nsi.map_cells_to_space(ref, sp, cluster_key="cell_type", epochs=500)
    imputed = result.project_genes(["Gad1", "Slc17a6"])
    probs = result.cluster_probabilities()
    adata = result.to_anndata()          # everything, ready for .write_h5ad
    cv = nsi.cross_validate(ref, sp, folds=10)
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

# Public names, imported on first use: napari's plugin discovery and the CLI's start-up (where a
# Ctrl-C must give one line, not a traceback) import this package without paying for torch.
_EXPORTS: dict[str, str] = {
    "InputError": "._errors",
    "InputWarning": "._errors",
    "MappingCancelled": "._errors",
    "MemoryEstimateError": "._errors",
    "load_merfish_hypothalamus": ".datasets",
    "EpochInfo": ".engine",
    "TangramMapper": ".engine",
    "cross_validate": ".evaluate",
    "summarize_cv": ".evaluate",
    "validate_cell_types": ".evaluate",
    "GenePlan": ".genes",
    "plan_genes": ".genes",
    "find_fov_key": ".io",
    "read_h5ad": ".io",
    "validate_adata": ".io",
    "write_h5ad_atomic": ".io",
    "MappingResult": ".mapping",
    "map_cells_to_space": ".mapping",
    "project_cell_annotations": ".project",
    "project_genes": ".project",
    "result_to_anndata": ".result",
}

if TYPE_CHECKING:
    from ._errors import InputError, InputWarning, MappingCancelled, MemoryEstimateError
    from .datasets import load_merfish_hypothalamus
    from .engine import EpochInfo, TangramMapper
    from .evaluate import cross_validate, summarize_cv, validate_cell_types
    from .genes import GenePlan, plan_genes
    from .io import find_fov_key, read_h5ad, validate_adata, write_h5ad_atomic
    from .mapping import MappingResult, map_cells_to_space
    from .project import project_cell_annotations, project_genes
    from .result import result_to_anndata


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
    "map_cells_to_space",
    "plan_genes",
    "project_cell_annotations",
    "project_genes",
    "read_h5ad",
    "result_to_anndata",
    "summarize_cv",
    "validate_adata",
    "validate_cell_types",
    "write_h5ad_atomic",
]
