"""The ensemble map: five neighbour searches averaged (:mod:`napari_spatial_impute.core.neighbours`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from napari_spatial_impute.core.engine.engines import threads_for
from napari_spatial_impute.core.engine.mapper import CancelFlag, EpochInfo
from napari_spatial_impute.core.engine.memory import trim
from napari_spatial_impute.core.engine.resources import check_fits, estimate_ensemble_map
from napari_spatial_impute.core.engine.search import resolve_search
from napari_spatial_impute.core.maps.base import BuiltMap
from napari_spatial_impute.core.maps.problem import Problem
from napari_spatial_impute.core.neighbours import neighbour_weights, similarity_values


class EnsembleMap:
    """Each spatial cell matched to its most similar reference cells; nothing is trained."""

    name = "ensemble"
    title = "the ensemble map (five neighbour searches averaged; nothing trained)"
    modes: tuple[str, ...] = ("cells",)

    def build(
        self,
        problem: Problem,
        *,
        callback: Callable[[EpochInfo], None] | None = None,
        cancel: CancelFlag = None,
    ) -> BuiltMap:
        t0 = time.perf_counter()
        n_ref, n_sp = problem.S_cells.shape[0], problem.n_spatial
        if problem.check_memory:
            check_fits(
                estimate_ensemble_map(n_ref, n_sp, problem.S_cells.shape[1]),
                torch.device("cpu"),
                problem.mode,
                options="use fewer reference cells, or map one FOV or section at a time",
            )
        # the spatial values as given: neighbour_weights log-normalises raw counts a block of
        # cells at a time (no second copy of every spatial cell)
        ref_raw, sp_raw = problem.similarity_raw
        S = similarity_values(problem.S_cells, ref_raw)
        search = problem.settings.search
        # small searches on one torch thread (threads_for): identical weights, and no waiting on
        # a second thread that another process has descheduled
        with threads_for(n_ref * n_sp):
            W = neighbour_weights(
                S, problem.G, cancel=cancel, search=search, seed=problem.seed, spatial_raw=sp_raw
            )
        # the searches' blocks of cells leave free pages in the C heap (0.22 GiB of 1.5 at
        # 250,000 cells, measured here): handed back before the next steps add their own
        trim()
        return BuiltMap(
            name=self.name,
            # the map, reference cells x spatial cells: each spatial cell's column holds the
            # weights of its matched reference cells and sums to 1
            # W.T: W's arrays read as CSC (no copy of the map)
            probabilities=W.T,
            neighbours=W,
            n_pairs=int(W.nnz),
            ran={"search": resolve_search(search, n_ref, n_sp)},
            seconds=time.perf_counter() - t0,
            timings={"neighbours_s": time.perf_counter() - t0},
        )
