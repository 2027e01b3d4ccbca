"""Learning the mapping between reference cells (or clusters) and spatial cells."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from napari_spatial_impute._errors import InputError, InputWarning
from napari_spatial_impute.core.engine.candidates import candidate_pairs
from napari_spatial_impute.core.engine.engines import threads_for
from napari_spatial_impute.core.engine.mapper import CancelFlag, TangramMapper, probe_engine_costs
from napari_spatial_impute.core.engine.mapper import EpochInfo as EpochInfo  # the callback's type
from napari_spatial_impute.core.engine.memory import reuse_freed_memory
from napari_spatial_impute.core.engine.objective import TERMS, Weights
from napari_spatial_impute.core.engine.resources import (
    GIB,
    available_bytes,
    check_fits,
    estimate_dense_mapping,
    estimate_ensemble_map,
    estimate_lean_mapping,
    resolve_device,
)
from napari_spatial_impute.core.engine.search import resolve_search
from napari_spatial_impute.core.genes import plan_genes
from napari_spatial_impute.core.metrics import cosine_per_gene, gene_sparsity
from napari_spatial_impute.core.neighbours import neighbour_weights, similarity_values
from napari_spatial_impute.core.preprocess import (
    apply_transform,
    cluster_profiles,
    dense_columns,
)
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


def _choose_engine(
    engine: str,
    mode: str,
    n_units: int,
    n_spatial: int,
    n_genes: int,
    candidates: int,
    reverse_candidates: int,
    dev: Any,
) -> tuple[bool | None, str]:
    """Whether the Tangram map runs on the lean engine (``None``: measure both), and a note.

    ``auto`` measures both engines on the problem (:func:`probe_engine_costs`) when the lean
    engine can save work: cells mode, and candidate pairs fewer than half of all pairs (with
    ``candidates`` per spatial cell and ``reverse_candidates`` per reference cell; with more,
    it would do the exact engine's work in a sparse layout). An exact mapping that would not fit
    in memory runs on the lean engine without a probe.
    """
    if engine == "auto":
        all_pairs = n_units * n_spatial
        most = n_spatial * min(candidates, n_units) + n_units * min(reverse_candidates, n_spatial)
        if mode != "cells" or 2 * most >= all_pairs:
            return False, ""
        need = estimate_dense_mapping(n_units, n_spatial, n_genes).total_bytes
        free = available_bytes(dev)
        if need > 0.9 * free:
            return True, (
                f"auto chose the lean engine: the exact engine would need {need / GIB:.1f} GiB "
                f"and {free / GIB:.1f} GiB is free"
            )
        return None, ""
    if engine == "lean" and mode == "constrained":
        raise InputError("the lean engine does not support constrained mode; use engine='exact'.")
    lean = engine == "lean" and n_units > candidates
    note = ""
    if engine == "lean" and not lean:
        note = (
            f"the exact engine ran: with {n_units} reference cells and {candidates} candidates per "
            "spatial cell the lean engine would keep every pair"
        )
        warnings.warn(note, InputWarning, stacklevel=3)
    return lean, note


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

    Two maps can be made (``method``). The **ensemble** (the default in cells mode) matches each
    spatial cell to its most similar reference cells over the training genes in five neighbour
    searches and averages them (:mod:`napari_spatial_impute.core.neighbours`); nothing is
    trained. The **Tangram** map is trained with the Tangram objective (tangram-sc's equation)
    for ``epochs``. Whichever ran is the result's one map: imputed genes, cluster probabilities,
    the mapped cell per spatial cell and, for the ensemble, prediction intervals and per-gene
    reliability all come from it. On every benchmark pair the ensemble imputes held-out genes
    more accurately than the Tangram map, and training the Tangram objective from the ensemble
    only lowered that accuracy (docs/benchmarks.md).

    Parameters
    ----------
    reference
        Dissociated single-cell data (all genes), cells x genes.
    spatial
        Spatial data with ``obsm["spatial"]``, cells x panel genes.
    method
        ``"ensemble"``, ``"tangram"`` or ``"auto"`` (the ensemble in cells mode, Tangram in
        clusters and constrained modes, which are Tangram options). Settings from ``density``
        to ``patience`` and ``init`` apply to the Tangram map only.
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
        Ensemble map: calibrate prediction intervals and per-gene reliability on the training
        genes (:mod:`napari_spatial_impute.core.uncertainty`). A Tangram map has neither.
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
    validate_adata(reference, "reference")
    validate_adata(spatial, "spatial", require_spatial=True)
    validate_spatial_coordinates(spatial)
    if cluster_key is not None and cluster_key not in reference.obs.columns:
        raise InputError(
            f"cluster key {cluster_key!r} is not in the reference obs; columns there are: "
            f"{', '.join(map(str, reference.obs.columns)) or '(none)'}."
        )
    if mode == "clusters" and cluster_key is None:
        raise InputError("clusters mode needs a cluster key; pass cluster_key (--cluster-key).")
    for message in input_warnings(reference, spatial, cluster_key):
        warnings.warn(message, InputWarning, stacklevel=2)
    map_method = resolve_map_method(method, mode)
    if map_method == "ensemble":
        asked = [
            name
            for name, value in (("engine", engine), ("init", init), ("device", device))
            if value is not None
            and not (name == "engine" and value == "auto")
            and not (name == "device" and str(value).lower() in ("cpu", "auto"))
        ]
        if asked:
            warnings.warn(
                f"the ensemble map ran, which trains nothing: {', '.join(asked)} "
                f"{'applies' if len(asked) == 1 else 'apply'} to the Tangram map only; use "
                "method='tangram' (--method tangram) to train it.",
                InputWarning,
                stacklevel=2,
            )
    # the ensemble map runs on the CPU and has no density prior: only a Tangram map checks them
    dev = resolve_device(device) if map_method == "tangram" else torch.device("cpu")
    plan = plan_genes(reference, spatial, genes=genes, cluster_key=cluster_key, n_markers=n_markers)

    ref_vals = apply_transform(reference, transform)
    sp_vals = apply_transform(spatial, transform)

    labels = None
    if cluster_key is not None:
        col = reference.obs[cluster_key]
        if col.isna().any():
            raise InputError(
                f"cluster key {cluster_key!r} has {int(col.isna().sum())} missing labels; "
                "fill them (e.g. 'unknown') or drop those cells."
            )
        labels = pd.Categorical(col.astype(str))
        labels = labels.remove_unused_categories()

    if mode == "clusters":
        assert labels is not None
        profiles, fractions = cluster_profiles(ref_vals, labels, scale=True)
        units = list(map(str, labels.categories))
        col_idx = ref_vals.var_names.get_indexer(plan.training_reference)
        S = np.ascontiguousarray(profiles[:, col_idx], dtype=np.float32)
        d_source: np.ndarray | None = fractions
        unit_weights = fractions
    else:
        S = dense_columns(ref_vals, plan.training_reference)
        units = list(map(str, reference.obs_names))
        d_source = None
        unit_weights = np.full(reference.n_obs, 1.0 / reference.n_obs, dtype=np.float32)
    G = dense_columns(sp_vals, plan.training_spatial)

    d, d_name = None, "none"
    if map_method == "tangram":
        d, d_name = density_prior(spatial, density)
        if mode in ("clusters", "constrained") and d is None:
            d, d_name = density_prior(spatial, "uniform")
        if lambda_d is None:
            lambda_d = 1.0 if d is not None else 0.0
        if lambda_d > 0 and d is None:
            raise InputError(
                "lambda_d > 0 needs a density prior; use density='uniform' or 'rna_count_based'."
            )

    n_units = S.shape[0]
    ref_kind = describe_values(reference.X)
    S_cells = S if mode != "clusters" else dense_columns(ref_vals, plan.training_reference)
    t_setup = time.perf_counter()
    if map_method == "ensemble":
        if check_memory:
            check_fits(
                estimate_ensemble_map(S_cells.shape[0], spatial.n_obs, S.shape[1]),
                dev,
                mode,
                options="use fewer reference cells, or map one FOV or section at a time",
            )
        raw = transform == "none" and ref_kind == "raw counts"
        t_train = t_done = time.perf_counter()  # nothing is trained: the time is neighbours_s
        # small searches on one torch thread (threads_for): identical weights, and no waiting on
        # a second thread that another process has descheduled
        with threads_for(S_cells.shape[0] * spatial.n_obs):
            W = neighbour_weights(
                similarity_values(S_cells, raw),
                similarity_values(G, raw),
                cancel=cancel,
                search=search,
                seed=0 if seed is None else int(seed),
            )
        # the map itself, units (reference cells) x spatial cells: each spatial cell's column
        # holds the weights of its matched reference cells and sums to 1
        P: np.ndarray | sp.csr_matrix = sp.csr_matrix(W.T, dtype=np.float32)
        history: dict[str, Any] = {k: [] for k in TERMS}
        epochs_done, engine_note, filter_p, stop_reason = 0, "", None, "not trained"
        n_pairs = int(W.nnz)
        # what ran: the Tangram map's settings played no part and are recorded at their defaults
        ran = dataclasses.replace(
            settings,
            method="ensemble",
            **{s.name: s.default for s in setting_specs() if s.name in TANGRAM_ONLY},
            search=resolve_search(search, S_cells.shape[0], spatial.n_obs),
        )
    else:
        W = None
        choice, engine_note = _choose_engine(
            engine, mode, n_units, spatial.n_obs, S.shape[1], candidates, reverse_candidates, dev
        )
        if check_memory:
            est = (
                estimate_lean_mapping(
                    n_units, spatial.n_obs, S.shape[1], candidates, reverse_candidates
                )
                if choice is not False  # auto measures the lean engine too
                else estimate_dense_mapping(n_units, spatial.n_obs, S.shape[1])
            )
            check_fits(est, dev, mode)

        assert lambda_d is not None  # resolved with the density prior above
        weights = Weights(
            lambda_g1, lambda_g2, float(lambda_d), lambda_r, lambda_count, lambda_f_reg
        )
        t_setup = time.perf_counter()
        if choice is None and (init is not None or epochs == 0):
            # initial logits are a dense mapping (the exact engine's); no epochs: nothing to time
            choice = False
        # the lean engine's per-epoch temporaries are large, short-lived and the same sizes every
        # epoch between refreshes (see _malloc); the exact engine's are small, and keeping its
        # freed blocks only raised its peak (8.3 vs 7.7 GiB here). Post-processing allocates
        # blocks of changing sizes: keeping them exhausted 24 GB at 20,000 x 200,000, so it runs
        # with glibc's defaults.
        with reuse_freed_memory() if choice is not False else nullcontext():
            pairs = None
            if choice is not False:
                with threads_for(n_units * spatial.n_obs):
                    pairs = candidate_pairs(
                        torch.from_numpy(S),
                        torch.from_numpy(G),
                        candidates,
                        reverse_candidates,
                        search=search,
                        seed=0 if seed is None else int(seed),
                    )
                if choice is None:  # auto: both engines measured on this problem
                    costs = probe_engine_costs(
                        S,
                        G,
                        weights,
                        pairs,
                        d=d,
                        learning_rate=learning_rate,
                        seed=seed,
                        device=dev,
                        cancel=cancel,
                    )
                    choice, engine_note = costs.lean_wins, costs.describe()
                    if not choice:
                        pairs = None
        lean = bool(choice)
        with reuse_freed_memory() if lean else nullcontext():
            mapper = TangramMapper(
                S,
                G,
                weights,
                d=d,
                d_source=d_source,
                learning_rate=learning_rate,
                seed=seed,
                device=dev,
                init=init,
                target_count=target_count if target_count is not None else spatial.n_obs,
                constrained=mode == "constrained",
                pairs=pairs,
            )
            t_train = time.perf_counter()
            scores: list[float] = []
            for info in mapper.iterate(epochs, cancel=cancel):
                if callback is not None:
                    callback(info)
                scores.append(info.score)
                if tol and len(scores) > patience and scores[-1] - scores[-1 - patience] < tol:
                    break
        stop_reason = "plateau" if mapper.epochs_done < epochs else "epochs"
        t_done = time.perf_counter()
        mapper.release_optimizer()
        P = mapper.probabilities()
        history = dict(mapper.history)
        epochs_done = mapper.epochs_done
        filter_p = mapper.filter_probabilities()
        n_pairs = int(pairs[0].shape[0]) if pairs is not None else int(n_units) * int(spatial.n_obs)
        # what ran: the settings with the resolved density, weight, device and engine
        ran = dataclasses.replace(
            settings,
            method="tangram",
            density=d_name,
            lambda_d=float(lambda_d),
            device=str(dev),
            engine="lean" if lean else "exact",
            candidates=candidates if lean else 0,
            reverse_candidates=reverse_candidates if lean else 0,
            search=resolve_search(search, n_units, spatial.n_obs) if lean else "exact",
        )
    t_neigh = time.perf_counter()

    if mode == "constrained":
        if filter_p is None:  # constrained mode always learns the filter
            raise RuntimeError("constrained mapping without filter probabilities")
        pred = np.asarray(P.T @ (S * filter_p[:, None]))
    else:
        pred = np.asarray(P.T @ S)
    train_scores = cosine_per_gene(pred, G)
    sp_sc = gene_sparsity(S_cells)
    sp_sp = gene_sparsity(G)
    train_df = pd.DataFrame(
        {
            "train_score": train_scores.astype(np.float64),
            "sparsity_sc": sp_sc,
            "sparsity_sp": sp_sp,
            "sparsity_diff": sp_sp - sp_sc,
        },
        index=pd.Index(plan.training_reference, name="gene"),
    )
    record: dict[str, Any] = {
        "epochs_done": epochs_done,
        "stop_reason": stop_reason,
        "engine_note": engine_note,
        "n_pairs": n_pairs,
        "reference_values": ref_kind,
        "spatial_values": describe_values(spatial.X),
    }
    assert tuple(record) == RUN_RECORD_KEYS
    params: dict[str, Any] = {**ran.to_params(), **record}
    result = MappingResult(
        probabilities=P,
        mode=mode,
        reference=reference,
        spatial=spatial,
        reference_values=ref_vals,
        spatial_values=sp_vals,
        unit_names=units,
        unit_weights=np.asarray(unit_weights, dtype=np.float32),
        genes=plan,
        train_genes_df=train_df,
        history={k: np.asarray(v, dtype=np.float64) for k, v in history.items()},
        params=params,
        cluster_key=cluster_key,
        filter_probabilities=filter_p,
        neighbours=W,
        timings={
            "validate_and_prepare_s": t_setup - t0,
            "setup_s": t_train - t_setup,
            "train_s": t_done - t_train,
            "neighbours_s": t_neigh - t_done,
            "total_s": time.perf_counter() - t0,
        },
    )
    if W is not None and uncertainty:
        from napari_spatial_impute.core.uncertainty import MAX_CALIBRATION_CELLS, calibrate

        t_cal = time.perf_counter()
        with threads_for(S_cells.shape[0] * min(spatial.n_obs, MAX_CALIBRATION_CELLS)):
            result.calibration = calibrate(
                result, seed=0 if seed is None else int(seed), cancel=cancel
            )
        result.timings["calibration_s"] = time.perf_counter() - t_cal
        result.timings["total_s"] = time.perf_counter() - t0
    return result
