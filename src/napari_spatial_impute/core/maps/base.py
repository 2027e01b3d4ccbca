"""The one interface of a map: a name, how it is built from a prepared problem, what it returns.

A *map* is a matrix ``M`` over mapped units (reference cells, or clusters) x spatial cells;
every result of a run (imputed genes ``Mᵀ S``, cluster probabilities, the mapped cell per
spatial cell, prediction intervals and per-gene reliability) is computed from it, whichever map
it is. Maps are peers: each implements :class:`MapKind` and is found by name in
:mod:`napari_spatial_impute.core.maps.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import scipy.sparse as sp

from napari_spatial_impute.core.engine.mapper import CancelFlag, EpochInfo

if TYPE_CHECKING:
    from napari_spatial_impute.core.maps.problem import Problem

#: A map as spatial cells x units (the ensemble's W, or a Tangram map's Mᵀ).
Operator = np.ndarray | sp.csr_matrix | sp.csc_matrix


@dataclass
class BuiltMap:
    """What building a map returns.

    Attributes
    ----------
    name
        The map's registry name (``"ensemble"``, ``"tangram"``, ...).
    probabilities
        The map, units x spatial cells, float32 (dense or CSR).
    neighbours
        The ensemble map's weights, spatial cells x reference cells (rows sum to 1), else
        ``None``.
    history
        Objective terms per epoch (empty lists for a map that trains nothing).
    epochs_done, stop_reason, engine_note, n_pairs
        How the map was made (the run record of
        :data:`~napari_spatial_impute.core.settings.RUN_RECORD_KEYS`).
    filter_probabilities
        Constrained mode's per-cell filter, else ``None``.
    ran
        The settings that differ from those asked for in what ran (resolved density,
        engine, search, ...); settings the map does not use are reset to their defaults by
        the caller.
    seconds
        Time to build the map.
    timings
        Its parts: ``setup_s`` (candidate pairs, engine probe) and ``train_s`` (the epochs) of a
        Tangram map, ``neighbours_s`` (the searches) of the ensemble.
    """

    name: str
    probabilities: np.ndarray | sp.csr_matrix | sp.csc_matrix
    neighbours: sp.csr_matrix | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    epochs_done: int = 0
    stop_reason: str = "not trained"
    engine_note: str = ""
    n_pairs: int = 0
    filter_probabilities: np.ndarray | None = None
    ran: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def operator(self) -> Operator:
        """Spatial cells x units: ``operator() @ values`` imputes ``values`` (units x genes)."""
        if self.neighbours is not None:
            return self.neighbours
        return self.probabilities.T


class MapKind(Protocol):
    """A map that can be built from a prepared :class:`~napari_spatial_impute.core.maps.problem.Problem`."""

    #: Registry name, the value of ``method=`` that forces this map.
    name: str
    #: One line for people: what the map is.
    title: str
    #: The modes it maps in (``"cells"``, ``"clusters"``, ``"constrained"``).
    modes: tuple[str, ...]

    def build(
        self,
        problem: Problem,
        *,
        callback: Callable[[EpochInfo], None] | None = None,
        cancel: CancelFlag = None,
    ) -> BuiltMap:
        """Make the map on ``problem`` (all of its training genes and spatial cells)."""
        ...
