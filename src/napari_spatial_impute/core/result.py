"""A learned mapping: :class:`MappingResult`, the record that projection, export and calibration take.

It is data only: :func:`~napari_spatial_impute.core.project.project_genes`,
:func:`~napari_spatial_impute.core.project.project_cell_annotations` and
:func:`~napari_spatial_impute.core.export.result_to_anndata` take it (tangram-sc's verbs); it
imports none of them, so no module of the core imports another in a circle, not even for types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_spatial_impute.core.genes import GenePlan


@dataclass
class MappingResult:
    """A learned mapping with what is needed to project genes and annotations.

    Attributes
    ----------
    probabilities
        The map, reference units (cells or clusters) x spatial cells, float32. A Tangram map
        is row-stochastic (each unit is placed somewhere), dense numpy (exact engine) or scipy
        CSR (lean engine); the ensemble map is ``neighbours`` transposed (CSR; each spatial
        cell's column sums to 1).
    mode
        ``"cells"``, ``"clusters"`` or ``"constrained"``.
    reference
        The reference AnnData as given (all genes).
    spatial
        The spatial AnnData as given.
    reference_values
        The reference after ``transform`` (X only), used for projection.
    spatial_values
        The spatial data after ``transform`` (X only).
    unit_names
        Names of the mapped units: reference cell names, or cluster names in clusters mode.
    unit_weights
        Each unit's share of cells (``1/n`` per cell, or cluster fractions).
    genes
        The gene plan (shared, training and dropped genes).
    train_genes_df
        Per training gene: ``train_score`` (cosine), ``sparsity_sc``, ``sparsity_sp``,
        ``sparsity_diff`` (tangram-sc's columns), indexed by reference gene name.
    history
        Objective terms per epoch.
    params
        Settings of the run (all plain values).
    cluster_key
        Reference obs column of the clusters, if any.
    filter_probabilities
        Constrained mode's per-cell filter, else ``None``.
    neighbours
        The ensemble map's weights (spatial cells x reference cells, rows sum to 1), or ``None``
        for a Tangram map.
    calibration
        Prediction-interval and reliability calibration
        (:class:`~napari_spatial_impute.core.uncertainty.Calibration`) or ``None``.
    choice
        With ``method="auto"``: the candidates, their inner held-out scores and the choice
        (:meth:`~napari_spatial_impute.core.maps.choose.MapChoice.record`), else ``None``.
    """

    probabilities: np.ndarray | sp.csr_matrix | sp.csc_matrix
    mode: str
    reference: ad.AnnData
    spatial: ad.AnnData
    reference_values: ad.AnnData
    spatial_values: ad.AnnData
    unit_names: list[str]
    unit_weights: np.ndarray
    genes: GenePlan
    train_genes_df: pd.DataFrame
    history: dict[str, np.ndarray]
    params: dict[str, Any]
    cluster_key: str | None = None
    filter_probabilities: np.ndarray | None = None
    neighbours: sp.csr_matrix | None = None
    timings: dict[str, float] = field(default_factory=dict)
    calibration: Any = None
    choice: dict[str, Any] | None = None

    @property
    def training_score(self) -> float:
        """Mean cosine similarity of the training genes at the final mapping."""
        return float(np.nanmean(self.train_genes_df["train_score"].to_numpy()))
