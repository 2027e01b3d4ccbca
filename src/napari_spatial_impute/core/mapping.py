"""Learning the mapping between reference cells (or clusters) and spatial cells.

:func:`map_cells_to_space` runs three steps, each usable alone: prepare the problem
(:func:`~napari_spatial_impute.core.maps.problem.prepare_problem`), build a map of the registry
(:mod:`napari_spatial_impute.core.maps.registry`; with ``method="auto"`` the user's own held-out
training genes choose it, :mod:`napari_spatial_impute.core.maps.choose`), and assemble the result
record (:func:`assemble_result`), calibrated by :func:`calibrate_map`.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputWarning
from napari_spatial_impute.core.engine.engines import threads_for
from napari_spatial_impute.core.engine.mapper import CancelFlag
from napari_spatial_impute.core.engine.mapper import EpochInfo as EpochInfo  # the callback's type
from napari_spatial_impute.core.engine.objective import TERMS
from napari_spatial_impute.core.maps.base import BuiltMap
from napari_spatial_impute.core.maps.choose import (
    InnerFold,
    MapChoice,
    build_inner,
    choice_cells,
    choose_map,
    held_genes,
)
from napari_spatial_impute.core.maps.problem import Problem, prepare_problem, values_line
from napari_spatial_impute.core.maps.problem import density_prior as density_prior
from napari_spatial_impute.core.maps.registry import get_map
from napari_spatial_impute.core.metrics import cosine_per_gene, gene_folds, gene_sparsity
from napari_spatial_impute.core.result import MappingResult
from napari_spatial_impute.core.settings import (  # noqa: F401 (MODES ... importable from here)
    DEFAULT_PATIENCE,
    DEFAULT_TOL,
    DENSITIES,
    ENGINES,
    MAX_SEED,
    MODES,
    RUN_RECORD_KEYS,
    TANGRAM_ONLY,
    Engine,
    MappingSettings,
    Method,
    Mode,
    Search,
    Transform,
    resolve_map_method,
    setting_specs,
)
from napari_spatial_impute.core.uncertainty import Calibration, calibrate


def map_cells_to_space(
    reference: ad.AnnData,
    spatial: ad.AnnData,
    *,
    method: Method = "auto",
    mode: Mode = "cells",
    cluster_key: str | None = None,
    genes: str | Sequence[str] = "overlap",
    n_markers: int = 100,
    density: str | np.ndarray | None = "uniform",
    epochs: int = 1000,
    learning_rate: float = 0.1,
    lambda_g1: float = 1.0,
    lambda_g2: float = 0.0,
    lambda_d: float | None = None,
    lambda_r: float = 0.0,
    lambda_count: float = 1.0,
    lambda_f_reg: float = 1.0,
    target_count: int | None = None,
    transform: Transform = "none",
    seed: int | None = 0,
    device: str = "cpu",
    callback: Callable[[EpochInfo], None] | None = None,
    cancel: CancelFlag = None,
    init: np.ndarray | None = None,
    check_memory: bool = True,
    engine: Engine = "auto",
    candidates: int = 50,
    reverse_candidates: int = 5,
    tol: float | None = DEFAULT_TOL,
    patience: int = DEFAULT_PATIENCE,
    uncertainty: bool = True,
    search: Search = "auto",
) -> MappingResult:
    """Map reference cells (or clusters) onto spatial cells.

    Two maps can be made (``method``), peers in :mod:`napari_spatial_impute.core.maps`. The
    **ensemble** matches each spatial cell to its most similar reference cells over the training
    genes in five neighbour searches and averages them (:mod:`napari_spatial_impute.core.neighbours`);
    nothing is trained. The **Tangram** map is trained with the Tangram objective (tangram-sc's
    equation) for ``epochs``. With ``method="auto"`` (cells mode) the user's own data choose:
    both are made without a seeded quarter of the training genes and the one that imputes those
    genes better is made (:func:`~napari_spatial_impute.core.maps.choose.choose_map`; the
    candidates, their scores and the choice are in ``result.choice`` and the one-line
    ``params["map_choice"]``; an ``InputWarning`` when the imputation is weak). Whichever map is
    made is the result's one map: imputed genes, cluster probabilities, the mapped cell per
    spatial cell, prediction intervals and per-gene reliability all come from it.

    Parameters
    ----------
    reference
        Dissociated single-cell data (all genes), cells x genes.
    spatial
        Spatial data with ``obsm["spatial"]``, cells x panel genes.
    method
        ``"ensemble"``, ``"tangram"`` or ``"auto"`` (chosen on held-out training genes in cells
        mode; Tangram in clusters and constrained modes, which are Tangram options). Settings
        from ``density`` to ``patience`` and ``init`` apply to the Tangram map only (with
        ``"auto"`` to its candidate too).
    mode
        ``"cells"`` maps every reference cell; ``"clusters"`` maps cluster profiles (needs
        ``cluster_key``; faster, more robust across specimens); ``"constrained"`` also learns
        tangram-sc's cell filter.
    cluster_key
        Reference obs column with cluster labels (projected onto space when given).
    genes
        Training genes: ``"overlap"``, ``"markers"`` or a list of names (any case).
    n_markers
        Marker genes per cluster when ``genes="markers"``.
    density
        Density prior over spatial cells: ``"uniform"`` (default, single-cell resolution data),
        ``"rna_count_based"``, ``"none"`` or a vector.
    epochs
        Training epochs.
    learning_rate
        Adam's step size.
    lambda_g1, lambda_g2, lambda_d, lambda_r, lambda_count, lambda_f_reg
        Weights of tangram-sc's terms. ``lambda_d`` defaults to 1 when a density prior is used.
    target_count
        Cells kept by constrained mode (default: the number of spatial cells).
    transform
        ``"none"`` keeps values as given (tangram-sc); ``"normalize_log1p"`` normalises each set
        to its median total count and applies ``log1p`` before mapping and projection.
    seed
        Seed of the initial mapping; the same seed gives the same result on the same device.
    device
        ``"cpu"`` (default), ``"cuda"`` or ``"auto"``.
    callback
        Called after each epoch with an :class:`EpochInfo`.
    cancel
        A ``threading.Event`` or a callable; when it is set the run stops with
        :class:`~napari_spatial_impute.MappingCancelled` within one epoch.
    init
        Initial logits (for parity checks and restarts).
    check_memory
        Refuse, before allocating, a mapping that would not fit in memory.
    engine
        ``"exact"``: the dense objective over all reference x spatial pairs (tangram-sc's
        equation, hand-derived gradient). ``"lean"``: the same objective restricted to candidate
        pairs (each spatial cell's ``candidates`` most similar reference cells and each reference
        cell's ``reverse_candidates`` most similar spatial cells); memory and time grow linearly
        with the cells. ``"auto"``: in cells mode, when the candidate pairs would be fewer
        than half of all pairs, both engines run a few probe epochs on this problem and the one
        cheaper per epoch trains (the lean engine's pair refresh counted; the exact engine
        probed on subsets of reference rows when the problem is large; lean without a probe
        when the exact mapping would not fit in memory); else exact. The choice and the measured
        costs are in ``params["engine_note"]``, the engine that ran in ``params["engine"]``;
        pass ``"exact"`` or ``"lean"`` for a run that does not depend on measured speed (the
        same seed gives the same result on the same engine and device).
    candidates, reverse_candidates
        Candidate pairs of the lean engine.
    tol
        Stop when the training score gained less than ``tol`` over the last ``patience`` epochs,
        a plateau (``0`` or ``None``: always run ``epochs``). The run's ``params`` record the
        epochs done and why training stopped (``stop_reason``: ``"plateau"``, ``"epochs"``, or
        ``"not trained"`` for the ensemble map). The default (gain under 0.001 over 50 epochs)
        was chosen on measured trajectories (docs/benchmarks.md, "Fast defaults (issue 14)").
    patience
        Window of ``tol``, in epochs.
    uncertainty
        Cells mode: calibrate prediction intervals and per-gene reliability of the map on
        training genes held out of it (:func:`calibrate_map`,
        :mod:`napari_spatial_impute.core.uncertainty`).
    search
        How the ensemble's neighbours and the lean engine's candidates are found: ``"exact"``
        compares every reference x spatial pair; ``"approximate"`` searches an inverted-file
        index (k-means lists of cells, the best lists probed;
        :mod:`napari_spatial_impute.core.engine.search`), whose time grows with about the
        square root of the reference instead of with it; ``"auto"`` is approximate above 10^9
        pairs with at least 20,000 reference cells, else exact (smaller data give the same
        result as the exact search). The params record which ran. Recall and accuracy against
        the exact search: docs/benchmarks.md, "Candidate search (issue 14)".

    Returns
    -------
    A :class:`MappingResult`.
    """
    t0 = time.perf_counter()
    settings = MappingSettings(
        mode=mode,
        cluster_key=cluster_key,
        genes=genes,
        n_markers=n_markers,
        density=density,
        epochs=epochs,
        learning_rate=learning_rate,
        lambda_g1=lambda_g1,
        lambda_g2=lambda_g2,
        lambda_d=lambda_d,
        lambda_r=lambda_r,
        lambda_count=lambda_count,
        lambda_f_reg=lambda_f_reg,
        target_count=target_count,
        transform=transform,
        seed=seed,
        device=device,
        engine=engine,
        candidates=candidates,
        reverse_candidates=reverse_candidates,
        tol=tol,
        patience=patience,
        uncertainty=uncertainty,
        method=method,
        search=search,
    ).validate()
    map_method = resolve_map_method(method, mode)
    if map_method == "ensemble":
        _warn_unused_tangram_settings(engine, init, device)
    problem = prepare_problem(reference, spatial, settings, init=init, check_memory=check_memory)
    t_setup = time.perf_counter()
    choice: MapChoice | None = None
    if map_method == "auto":
        choice = choose_map(problem, cancel=cancel)
        map_method = choice.chosen
        # only the chosen map's inner map is used again (the calibration): free the others
        choice.folds = {k: v for k, v in choice.folds.items() if k == choice.chosen}
        if choice.weak():
            warnings.warn(choice.weak(), InputWarning, stacklevel=2)
        if choice.chosen != "tangram":
            _warn_unused_tangram_settings(engine, init, device, chosen=True)
        else:
            problem = _same_engine(problem, choice.folds["tangram"])
    t_choice = time.perf_counter()
    built = get_map(map_method).build(problem, callback=callback, cancel=cancel)
    if choice is not None and built.name in choice.folds and not built.engine_note:
        inner_note = choice.folds[built.name].built.engine_note
        if inner_note:
            built.engine_note = f"{inner_note} (measured on the automatic choice's inner map)"
    t_done = time.perf_counter()
    result = assemble_result(problem, built, choice)
    result.timings.update(
        {
            "validate_and_prepare_s": t_setup - t0,
            "choice_s": t_choice - t_setup,
            "build_s": t_done - t_choice,
            **{f"choice_{n}_s": v for n, v in (choice.seconds if choice else {}).items()},
            # the map's own parts: setup_s and train_s (Tangram), neighbours_s (ensemble)
            "setup_s": 0.0,
            "train_s": 0.0,
            "neighbours_s": 0.0,
            **built.timings,
        }
    )
    if uncertainty and mode == "cells":
        t_cal = time.perf_counter()
        result.calibration = calibrate_map(problem, result, built, choice, cancel=cancel)
        result.timings["calibration_s"] = time.perf_counter() - t_cal
    result.timings["total_s"] = time.perf_counter() - t0
    return result


def _warn_unused_tangram_settings(
    engine: str, init: np.ndarray | None, device: str, chosen: bool = False
) -> None:
    """Warn when Tangram-only settings were asked for but the ensemble map runs."""
    asked = [
        name
        for name, value in (("engine", engine), ("init", init), ("device", device))
        if value is not None
        and not (name == "engine" and value == "auto")
        and not (name == "device" and str(value).lower() in ("cpu", "auto"))
    ]
    if asked:
        why = "auto chose the ensemble map" if chosen else "the ensemble map ran"
        warnings.warn(
            f"{why}, which trains nothing: {', '.join(asked)} "
            f"{'applies' if len(asked) == 1 else 'apply'} to the Tangram map only; use "
            "method='tangram' (--method tangram) to train it.",
            InputWarning,
            stacklevel=3,
        )


def _same_engine(problem: Problem, fold: InnerFold) -> Problem:
    """The problem with the engine its inner Tangram map measured (no second probe).

    Only when the inner map had every spatial cell (same size, a quarter fewer genes): on a
    subset of cells the engines' costs differ from the whole problem's.
    """
    ran = fold.built.ran.get("engine")
    if problem.settings.engine != "auto" or fold.cells is not None or not ran:
        return problem
    settings = dataclasses.replace(problem.settings, engine=ran)
    return dataclasses.replace(problem, settings=settings)


def assemble_result(
    problem: Problem, built: BuiltMap, choice: MapChoice | None = None
) -> MappingResult:
    """The result record of a built map: training scores, the settings that ran, the run record."""
    settings = problem.settings
    S, G = problem.S, problem.G
    P = built.probabilities
    if problem.mode == "constrained":
        if built.filter_probabilities is None:  # constrained mode always learns the filter
            raise RuntimeError("constrained mapping without filter probabilities")
        S = S * built.filter_probabilities[:, None]
    sp_sc = gene_sparsity(problem.S_cells)
    sp_sp = gene_sparsity(G)
    train_df = pd.DataFrame(
        {
            "train_score": training_scores(P, S, G),
            "sparsity_sc": sp_sc,
            "sparsity_sp": sp_sp,
            "sparsity_diff": sp_sp - sp_sc,
        },
        index=pd.Index(problem.plan.training_reference, name="gene"),
    )
    # what ran: the settings a map does not use are recorded at their defaults
    unused = TANGRAM_ONLY if built.name != "tangram" else ()
    ran = dataclasses.replace(
        settings,
        **{s.name: s.default for s in setting_specs() if s.name in unused},
        **{**built.ran, "method": built.name},
    )
    record: dict[str, Any] = {
        "epochs_done": built.epochs_done,
        "stop_reason": built.stop_reason,
        "engine_note": built.engine_note,
        "n_pairs": built.n_pairs,
        "reference_values": problem.reference_kind,
        "spatial_values": problem.spatial_kind,
        "values_note": values_line(problem),
        "map_choice": choice.describe() if choice is not None else "",
    }
    assert tuple(record) == RUN_RECORD_KEYS
    history = built.history or {k: [] for k in TERMS}
    return MappingResult(
        probabilities=P,
        mode=problem.mode,
        reference=problem.reference,
        spatial=problem.spatial,
        reference_values=problem.reference_values,
        spatial_values=problem.spatial_values,
        unit_names=problem.units,
        unit_weights=problem.unit_weights,
        genes=problem.plan,
        train_genes_df=train_df,
        history={k: np.asarray(v, dtype=np.float64) for k, v in history.items()},
        params={**ran.to_params(), **record},
        cluster_key=settings.cluster_key,
        filter_probabilities=built.filter_probabilities,
        neighbours=built.neighbours,
        choice=choice.record() if choice is not None else None,
    )


#: Spatial cells per block of :func:`training_scores` (its float64 arrays are this many cells x
#: the training genes; above it, the scores are sums over blocks).
SCORE_ROWS = 1 << 14


def training_scores(P: Any, S: np.ndarray, G: np.ndarray, rows: int | None = None) -> np.ndarray:
    """Cosine of each training gene's imputed values ``Pᵀ S`` with its measured values ``G``.

    Computed over blocks of ``rows`` spatial cells (default :data:`SCORE_ROWS`): no array of
    all spatial cells x genes beyond ``G``. Up to that many cells, one block, as
    :func:`~napari_spatial_impute.core.metrics.cosine_per_gene` of the whole; above it the
    per-gene sums are added over blocks (equal to float64 rounding).
    """
    rows = rows or SCORE_ROWS
    n_sp = G.shape[0]
    if n_sp <= rows:
        return cosine_per_gene(np.asarray(P.T @ S), G).astype(np.float64)
    num = np.zeros(G.shape[1], dtype=np.float64)
    pp, gg = np.zeros_like(num), np.zeros_like(num)
    PT = P.T  # spatial x units (a view: CSR of a CSC map, or a dense transpose)
    for a in range(0, n_sp, rows):
        b = min(n_sp, a + rows)
        pred = np.asarray(PT[a:b] @ S, dtype=np.float64)
        meas = np.asarray(G[a:b], dtype=np.float64)
        num += (pred * meas).sum(0)
        pp += (pred * pred).sum(0)
        gg += (meas * meas).sum(0)
    den = np.sqrt(pp) * np.sqrt(gg)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def calibrate_map(
    problem: Problem,
    result: MappingResult,
    built: BuiltMap,
    choice: MapChoice | None = None,
    cancel: CancelFlag = None,
) -> Calibration:
    """Prediction intervals and per-gene reliability of the map that was made.

    On the automatic choice's sample of spatial cells (at most
    :data:`~napari_spatial_impute.core.maps.choose.CHOICE_CELLS`). The ensemble (cheap to
    rebuild) holds out every training gene once in four folds, the first being the choice's
    held-out quarter (its inner map reused). A Tangram map reuses the inner map its automatic
    choice trained without that quarter, or trains one on the engine that trained the map.
    """
    genes, seed, name = problem.genes, problem.seed, built.name
    cells = choice_cells(problem.n_spatial, seed)
    reuse = choice.folds.get(name) if choice is not None else None
    if name == "ensemble":
        pos = {g: i for i, g in enumerate(genes)}
        groups = gene_folds(genes, min(4, len(genes)), seed) if len(genes) >= 2 else [genes]
        n_cal = problem.n_spatial if cells is None else len(cells)
        folds = []
        with threads_for(problem.S_cells.shape[0] * n_cal):
            for held in groups:
                positions = [pos[g] for g in held]
                if reuse is not None and reuse.held == positions:
                    folds.append(reuse)
                else:
                    folds.append(build_inner(problem, name, positions, cells, cancel=cancel))
    elif reuse is not None:
        folds = [reuse]
    else:
        if "engine" in built.ran:  # the engine that trained the map, not a second probe
            settings = dataclasses.replace(problem.settings, engine=built.ran["engine"])
            problem = dataclasses.replace(problem, settings=settings)
        folds = [build_inner(problem, name, held_genes(genes, seed), cells, cancel=cancel)]
    return calibrate(result, folds, cells, seed=seed)
