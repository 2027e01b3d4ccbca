"""The public API is pinned: the names ``napari_spatial_impute`` exports and their signatures.

A change here is a change for every notebook and script that uses the package: make it on
purpose (and say so in the changelog), never as a side effect of moving code.
"""

from __future__ import annotations

import inspect

import napari_spatial_impute as nsi

NAMES = [
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

FUNCTIONS = {
    "cross_validate": "reference, spatial, kw:folds=10, kw:seed=0, kw:genes=None, kw:progress=None, kw:projection='auto', kw:fold_order='random', kw:transform='auto', kw:baselines=True, **map_kwargs",
    "find_fov_key": "adata, fov_key=None",
    "load_merfish_hypothalamus": "",
    "map_batches": "reference, spatial, batch_key, out, kw:impute=None, kw:projection='auto', kw:top_k=10, kw:workers=0, kw:scheduler=None, kw:memory_limit=None, kw:retries=2, kw:progress=None, kw:cancel=None, kw:extra_uns=None, **map_kwargs",
    "map_cells_to_space": "reference, spatial, kw:method='auto', kw:mode='cells', kw:cluster_key=None, kw:genes='overlap', kw:n_markers=100, kw:density='uniform', kw:epochs=1000, kw:learning_rate=0.1, kw:lambda_g1=1.0, kw:lambda_g2=0.0, kw:lambda_d=None, kw:lambda_r=0.0, kw:lambda_count=1.0, kw:lambda_f_reg=1.0, kw:target_count=None, kw:transform='none', kw:seed=0, kw:device='cpu', kw:callback=None, kw:cancel=None, kw:init=None, kw:check_memory=True, kw:engine='auto', kw:candidates=50, kw:reverse_candidates=5, kw:tol=0.001, kw:patience=50, kw:uncertainty=True, kw:search='auto'",
    "plan_genes": "reference, spatial, genes='overlap', cluster_key=None, n_markers=100",
    "project_cell_annotations": "result, key=None, source='auto'",
    "project_genes": "result, genes=None, method='auto'",
    "read_h5ad": "path, role='data', backed=False",
    "result_to_anndata": (
        "result, genes=None, method='auto', top_k=10, impute=True, summaries=None"
    ),
    "summarize_cv": "df",
    "validate_adata": "adata, role, kw:require_spatial=False",
    "validate_cell_types": "result, spatial=None, markers=None, cell_type_key=None, n_markers=1",
    "write_h5ad_atomic": "adata, path",
    "read_spatial": "store, table=None, coordinate_system=None",
    "write_result_to_store": "result, store, name=None, kw:out=None, kw:overwrite=False, kw:genes=None, kw:method='auto', kw:chunk_genes=None, kw:extra_uns=None",
}
#: MappingResult is a record (issue 22): the verbs are functions that take it, pinned above
RESULT_VERBS = ("project_genes", "project_cell_annotations", "result_to_anndata")


def _signature(func) -> str:
    out = []
    for p in inspect.signature(func).parameters.values():
        default = "" if p.default is inspect.Parameter.empty else f"={p.default!r}"
        prefix = {"VAR_KEYWORD": "**", "VAR_POSITIONAL": "*"}.get(p.kind.name, "")
        keyword = "kw:" if p.kind.name == "KEYWORD_ONLY" else ""
        out.append(f"{prefix}{keyword}{p.name}{default}")
    return ", ".join(out)


def test_exported_names():
    assert sorted(nsi.__all__) == sorted(NAMES)


def test_function_signatures():
    assert {name: _signature(getattr(nsi, name)) for name in FUNCTIONS} == FUNCTIONS


def test_the_result_is_a_record_the_verbs_take():
    """No method of MappingResult calls back into projection or export; the verbs take it."""
    methods = [
        name
        for name, value in vars(nsi.MappingResult).items()
        if callable(value) and not name.startswith("_")
    ]
    assert methods == []
    for verb in RESULT_VERBS:
        assert _signature(getattr(nsi, verb)).startswith("result, ")
