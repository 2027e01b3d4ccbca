"""A prepared mapping problem: what every map is built from.

:func:`prepare_problem` validates the inputs, plans the training genes, applies the value
transform and builds the dense training matrices once; every map of the registry
(:mod:`napari_spatial_impute.core.maps.registry`) is then built from the same :class:`Problem`,
and :meth:`Problem.restrict` gives the same problem on fewer training genes or spatial cells
(the inner held-out genes of the automatic choice and of the calibration).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputError, InputWarning
from napari_spatial_impute.core.genes import GenePlan, plan_genes
from napari_spatial_impute.core.neighbours import similarity_values
from napari_spatial_impute.core.preprocess import apply_transform, cluster_profiles, dense_columns
from napari_spatial_impute.core.settings import MappingSettings
from napari_spatial_impute.io.files import (
    describe_values,
    input_warnings,
    validate_adata,
    validate_spatial_coordinates,
)


def density_prior(
    spatial_values: ad.AnnData | np.ndarray, density: str | np.ndarray | Sequence[float] | None
) -> tuple[np.ndarray | None, str]:
    """Target density over spatial cells.

    Parameters
    ----------
    spatial_values
        Spatial data (for ``rna_count_based``: each cell's total over all its genes).
    density
        ``"uniform"``, ``"rna_count_based"``, ``"none"``/``None`` (no density term) or a vector
        of non-negative weights, one per spatial cell (normalised to sum to 1).

    Returns
    -------
    ``(d, name)``.
    """
    n = spatial_values.shape[0]
    if density is None or (isinstance(density, str) and density == "none"):
        return None, "none"
    if isinstance(density, str):
        if density == "uniform":
            return np.full(n, 1.0 / n, dtype=np.float32), "uniform"
        if density == "rna_count_based":
            X = spatial_values.X if isinstance(spatial_values, ad.AnnData) else spatial_values
            totals = np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()
            if totals.sum() <= 0:
                raise InputError(
                    "rna_count_based density needs counts; the spatial data sums to 0."
                )
            return (totals / totals.sum()).astype(np.float32), "rna_count_based"
        raise InputError(
            f"density {density!r} is not known; use 'uniform', 'rna_count_based', 'none' or a vector."
        )
    vec = np.asarray(density, dtype=np.float64).ravel()
    if vec.shape[0] != n:
        raise InputError(
            f"density vector has {vec.shape[0]} values; expected one per spatial cell ({n})."
        )
    if not np.all(np.isfinite(vec)) or (vec < 0).any() or vec.sum() <= 0:
        raise InputError("density vector must be finite, non-negative and not all zero.")
    return (vec / vec.sum()).astype(np.float32), "custom"


@dataclass
class Problem:
    """One mapping problem, prepared once and shared by every map.

    Attributes
    ----------
    settings
        The validated settings of the run.
    reference, spatial
        The data as given.
    reference_values, spatial_values
        The data after ``settings.transform`` (X only).
    plan
        The gene plan (shared, training and dropped genes).
    S
        Mapped units (reference cells, or cluster profiles in clusters mode) x training genes.
    S_cells
        Reference cells x training genes (``S`` itself in cells and constrained modes).
    G
        Spatial cells x training genes.
    units, unit_weights
        Names of the mapped units and each one's share of cells.
    labels
        The reference clusters (pandas Categorical) when a cluster key was given.
    d_source
        Clusters mode: each cluster's fraction of cells (the Tangram map's count term).
    reference_kind, spatial_kind
        What the values of each data set are (:func:`~napari_spatial_impute.io.files.describe_values`).
    init
        Initial logits of a Tangram map (parity checks and restarts).
    check_memory
        Refuse, before allocating, a map that would not fit in memory.
    cells
        Spatial cells of the original problem kept by :meth:`restrict` (``None``: all).
    """

    settings: MappingSettings
    reference: ad.AnnData
    spatial: ad.AnnData
    reference_values: ad.AnnData
    spatial_values: ad.AnnData
    plan: GenePlan
    S: np.ndarray
    S_cells: np.ndarray
    G: np.ndarray
    units: list[str]
    unit_weights: np.ndarray
    labels: pd.Categorical | None
    d_source: np.ndarray | None
    reference_kind: str
    spatial_kind: str
    init: np.ndarray | None = None
    check_memory: bool = True
    cells: np.ndarray | None = None
    genes: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.genes:
            self.genes = list(self.plan.training_reference)

    @property
    def n_spatial(self) -> int:
        """Spatial cells of this problem."""
        return int(self.G.shape[0])

    @property
    def mode(self) -> str:
        return str(self.settings.mode)

    @property
    def seed(self) -> int:
        """The run's seed (0 when unset) for searches, folds and cell subsets."""
        return 0 if self.settings.seed is None else int(self.settings.seed)

    @property
    def similarity_raw(self) -> tuple[bool, bool]:
        """Whether the reference / spatial values are raw counts, log-normalised to compare cells.

        Decided per data set: a raw-count spatial assay is log-normalised to compare its cells
        with a reference distributed as normalised values, and the reverse.
        """
        none = self.settings.transform == "none"
        return (
            none and self.reference_kind == "raw counts",
            none and self.spatial_kind == "raw counts",
        )

    def similarity(self, cells: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(S_cells, G)`` as cells are compared (:func:`similarity_values` per data set);
        ``cells``: those spatial rows only (the same values, no copy of all rows made)."""
        ref_raw, sp_raw = self.similarity_raw
        return similarity_values(self.S_cells, ref_raw), similarity_values(self.G, sp_raw, cells)

    def restrict(self, columns: Sequence[int], cells: np.ndarray | None = None) -> Problem:
        """The same problem on some training genes (column positions) and spatial cells."""
        cols = np.asarray(columns, dtype=np.int64)
        G = self.G[:, cols] if cells is None else self.G[np.asarray(cells)][:, cols]
        kept = cells
        if cells is not None and self.cells is not None:
            kept = self.cells[np.asarray(cells)]
        return dataclasses.replace(
            self,
            S=np.ascontiguousarray(self.S[:, cols]),
            S_cells=np.ascontiguousarray(self.S_cells[:, cols]),
            G=np.ascontiguousarray(G),
            init=None,
            cells=kept,
            genes=[self.genes[i] for i in cols],
        )

    def density(self) -> tuple[np.ndarray | None, str]:
        """The Tangram map's density prior over this problem's spatial cells."""
        density = self.settings.density
        if self.cells is not None and density is not None and not isinstance(density, str):
            density = np.asarray(density, dtype=np.float64).ravel()[self.cells]
        values: Any = np.empty((self.n_spatial, 0))  # uniform, none and vectors need the size
        if isinstance(density, str) and density == "rna_count_based":
            values = self.spatial.X if self.cells is None else self.spatial.X[self.cells]
        d, name = density_prior(values, density)
        if self.mode in ("clusters", "constrained") and d is None:
            d, name = density_prior(values, "uniform")
        return d, name


def prepare_problem(
    reference: ad.AnnData,
    spatial: ad.AnnData,
    settings: MappingSettings,
    *,
    init: np.ndarray | None = None,
    check_memory: bool = True,
) -> Problem:
    """Validate the data against the settings and build the training matrices once."""
    s = settings
    validate_adata(reference, "reference")
    validate_adata(spatial, "spatial", require_spatial=True)
    validate_spatial_coordinates(spatial)
    key = s.cluster_key
    if key is not None and key not in reference.obs.columns:
        raise InputError(
            f"cluster key {key!r} is not in the reference obs; columns there are: "
            f"{', '.join(map(str, reference.obs.columns)) or '(none)'}."
        )
    if s.mode == "clusters" and key is None:
        raise InputError("clusters mode needs a cluster key; pass cluster_key (--cluster-key).")
    for message in input_warnings(reference, spatial, key):
        warnings.warn(message, InputWarning, stacklevel=3)
    plan = plan_genes(reference, spatial, genes=s.genes, cluster_key=key, n_markers=s.n_markers)
    ref_vals = apply_transform(reference, s.transform)
    sp_vals = apply_transform(spatial, s.transform)

    labels = None
    if key is not None:
        col = reference.obs[key]
        if col.isna().any():
            raise InputError(
                f"cluster key {key!r} has {int(col.isna().sum())} missing labels; "
                "fill them (e.g. 'unknown') or drop those cells."
            )
        labels = pd.Categorical(col.astype(str)).remove_unused_categories()

    S_cells = dense_columns(ref_vals, plan.training_reference)
    d_source: np.ndarray | None = None
    if s.mode == "clusters":
        assert labels is not None
        profiles, fractions = cluster_profiles(ref_vals, labels, scale=True)
        col_idx = ref_vals.var_names.get_indexer(plan.training_reference)
        S = np.ascontiguousarray(profiles[:, col_idx], dtype=np.float32)
        units = list(map(str, labels.categories))
        d_source = unit_weights = fractions
    else:
        S = S_cells
        units = list(map(str, reference.obs_names))
        unit_weights = np.full(reference.n_obs, 1.0 / reference.n_obs, dtype=np.float32)
    return Problem(
        settings=s,
        reference=reference,
        spatial=spatial,
        reference_values=ref_vals,
        spatial_values=sp_vals,
        plan=plan,
        S=S,
        S_cells=S_cells,
        G=dense_columns(sp_vals, plan.training_spatial),
        units=units,
        unit_weights=np.asarray(unit_weights, dtype=np.float32),
        labels=labels,
        d_source=d_source,
        reference_kind=describe_values(reference.X),
        spatial_kind=describe_values(spatial.X),
        init=init,
        check_memory=check_memory,
    )


def values_line(problem: Problem) -> str:
    """One line: what the values of each data set are, the transform, and how cells are compared.

    For example ``values: reference non-integer (normalised), spatial raw counts; transform
    applied: none; cells compared on the reference as given and the spatial counts
    log-normalised; imputed in the reference's units``.
    """
    ref_raw, sp_raw = problem.similarity_raw
    t = problem.settings.transform
    if t != "none":
        how = f"cells compared on the {t} values of both"
    else:

        def one(role: str, raw: bool) -> str:
            return f"the {role} counts log-normalised" if raw else f"the {role} as given"

        how = f"cells compared on {one('reference', ref_raw)} and {one('spatial', sp_raw)}"
    return (
        f"values: reference {problem.reference_kind}, spatial {problem.spatial_kind}; "
        f"transform applied: {t}; {how}; imputed in the reference's units"
    )
