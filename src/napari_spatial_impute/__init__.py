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

from ._errors import InputError, MappingCancelled, MemoryEstimateError
from .datasets import load_merfish_hypothalamus
from .engine import EpochInfo, TangramMapper
from .evaluate import cross_validate, summarize_cv, validate_cell_types
from .genes import GenePlan, plan_genes
from .io import find_fov_key, read_h5ad, validate_adata, write_h5ad_atomic
from .mapping import MappingResult, map_cells_to_space
from .project import project_cell_annotations, project_genes
from .result import result_to_anndata

__all__ = [
    "EpochInfo",
    "GenePlan",
    "InputError",
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
