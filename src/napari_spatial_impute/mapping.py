"""Learning the mapping between reference cells (or clusters) and spatial cells."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ._errors import InputError, MappingCancelled
from .candidates import candidate_pairs, merge_pairs
from .genes import GenePlan, plan_genes
from .io import describe_values, validate_adata, validate_spatial_coordinates
from .neighbours import neighbour_weights, similarity_values
from .objective import TERMS, BlockAdam, DenseObjective, Weights, tangram_loss
from .preprocess import Transform, apply_transform, check_transform, cluster_profiles, dense_columns
from .resources import check_fits, estimate_dense_mapping, estimate_lean_mapping, resolve_device
from .sparse_objective import CandidateObjective

Mode = Literal["cells", "clusters", "constrained"]
Engine = Literal["exact", "lean", "auto"]
ENGINES: tuple[str, ...] = ("exact", "lean", "auto")
#: Dense mappings above this many entries use the lean engine when ``engine="auto"``.
AUTO_LEAN_ENTRIES = 50_000_000
MODES: tuple[str, ...] = ("cells", "clusters", "constrained")
DENSITIES: tuple[str, ...] = ("uniform", "rna_count_based", "none")
CancelFlag = threading.Event | Callable[[], bool] | None
#: A pair added by the lean engine starts this far (in log-probability) below its row's total.
NEW_PAIR_LOGIT_OFFSET = 8.0
#: Mappings with fewer elements than this run single-threaded on the CPU.
SMALL_PROBLEM = 1 << 24


@dataclass(frozen=True)
class EpochInfo:
    """What one training epoch reports to a callback or a GUI worker.

    Attributes
    ----------
    epoch
        1-based epoch number.
    n_epochs
        Planned epochs.
    losses
        The objective's terms before this epoch's update (``main_loss`` is the training score).
    """

    epoch: int
    n_epochs: int
    losses: dict[str, float]

    @property
    def score(self) -> float:
        """Mean gene-wise cosine similarity of the training genes (tangram-sc's ``Score``)."""
        return self.losses["main_loss"]


def _is_cancelled(cancel: CancelFlag) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


class TangramMapper:
    """Optimise the Tangram objective for a mapping matrix.

    Cells and clusters modes use :class:`~napari_spatial_impute.objective.DenseObjective` (exact
    objective, hand-derived gradient, block-wise Adam). Constrained mode uses autograd.

    Parameters
    ----------
    S, G
        Reference (units x genes) and spatial (cells x genes) training matrices.
    weights
        Objective weights.
    d
        Target density over spatial cells, or ``None``.
    d_source
        Densities of the reference units (clusters mode) or ``None``.
    learning_rate
        Adam's step size.
    seed
        Seed of the initial logits (standard normal).
    device
        Torch device.
    init
        Initial logits to start from instead of random ones (same shape as the mapping).
    target_count
        Cells kept by constrained mode.
    constrained
        Learn tangram-sc's cell filter as well (constrained mode).
    num_threads
        CPU threads per epoch; ``None`` uses one thread for small mappings and torch's
        setting otherwise.
    pairs
        ``(rows, cols)`` candidate pairs for the lean engine (see
        :func:`~napari_spatial_impute.candidates.candidate_pairs`); ``None`` maps densely.
    refresh_every
        Lean engine: every this many epochs, add for each spatial cell the
        ``refresh_candidates`` pairs whose mass would lower the loss most and drop pairs whose
        probability fell below ``prune_below`` (0 disables refreshing).
    refresh_candidates, prune_below
        See ``refresh_every``.
    """

    def __init__(
        self,
        S: np.ndarray,
        G: np.ndarray,
        weights: Weights,
        *,
        d: np.ndarray | None = None,
        d_source: np.ndarray | None = None,
        learning_rate: float = 0.1,
        seed: int | None = 0,
        device: torch.device | str = "cpu",
        init: np.ndarray | None = None,
        target_count: int | None = None,
        constrained: bool = False,
        num_threads: int | None = None,
        pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
        refresh_every: int = 25,
        refresh_candidates: int = 10,
        prune_below: float = 1e-5,
    ) -> None:
        self.device = torch.device(device)
        self.num_threads = num_threads
        dt = torch.float32
        self.S = torch.as_tensor(np.asarray(S, dtype=np.float32), device=self.device)
        self.G = torch.as_tensor(np.asarray(G, dtype=np.float32), device=self.device)
        self.d = None if d is None else torch.as_tensor(np.asarray(d, dtype=np.float32), device=self.device)
        self.d_source = (
            None if d_source is None else torch.as_tensor(np.asarray(d_source, dtype=np.float32), device=self.device)
        )
        self.weights = weights
        self.learning_rate = learning_rate
        self.constrained = constrained
        self.target_count = target_count
        n, s = self.S.shape[0], self.G.shape[0]
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if seed is None else int(seed))
        self.pairs = pairs
        self.refresh_every = refresh_every
        self.refresh_candidates = refresh_candidates
        self.prune_below = prune_below
        self.history: dict[str, list[float]] = {k: [] for k in TERMS}
        self.epochs_done = 0
        self.F: torch.Tensor | None = None
        if pairs is not None:
            if constrained:
                raise InputError("the lean engine does not support constrained mode; use engine='exact'.")
            rows, cols = (p.to(self.device) for p in pairs)
            self.M = torch.randn((rows.shape[0],), generator=gen, dtype=dt).to(self.device)
            w = None if self.d_source is None else self.d_source
            self.objective = CandidateObjective(self.S, self.G, weights, rows, cols, d=self.d, w=w)
            self._adam = BlockAdam(self.M, lr=learning_rate)
            return
        if init is not None:
            init = np.asarray(init, dtype=np.float32)
            if init.shape != (n, s):
                raise InputError(f"initial mapping has shape {init.shape}; expected {(n, s)}.")
            M = torch.as_tensor(init).to(self.device, dtype=dt).clone()
        else:
            M = torch.randn((n, s), generator=gen, dtype=dt).to(self.device)
        self.M = M
        if constrained:
            self.F = torch.randn((n,), generator=gen, dtype=dt).to(self.device)
            self.M.requires_grad_(True)
            self.F.requires_grad_(True)
            self._torch_opt = torch.optim.Adam([self.M, self.F], lr=learning_rate)
            self.history.update(count_reg=[], f_reg=[])
        else:
            self.objective = DenseObjective(
                self.S, self.G, weights, d=self.d, d_source=self.d_source, workers=self.workers()
            )
            self._adam = BlockAdam(self.M, lr=learning_rate)

    def step(self) -> dict[str, float]:
        """Run one epoch: evaluate the objective at the current mapping, then update it."""
        if self.constrained:
            terms_t = tangram_loss(
                self.M, self.S, self.G, self.weights, d=self.d, F=self.F, target_count=self.target_count
            )
            self._torch_opt.zero_grad()
            terms_t["total_loss"].backward()
            self._torch_opt.step()
            values = {k: float(v.detach()) for k, v in terms_t.items()}
        elif self.pairs is not None:
            values, grad = self.objective.value_and_grad(self.M)
            self._adam.begin_step()
            self._adam(slice(None), grad)
            if self.refresh_every and (self.epochs_done + 1) % self.refresh_every == 0:
                self._refresh_pairs()
        else:
            self._adam.begin_step()
            values = self.objective.value_and_update(self.M, self._adam)
        for k in self.history:
            self.history[k].append(values.get(k, float("nan")))
        self.epochs_done += 1
        return values

    def _refresh_pairs(self) -> None:
        """Lean engine: add the most promising pairs, drop negligible ones (working set)."""
        obj = self.objective
        new_rows, new_cols = obj.propose(self.refresh_candidates)
        with torch.no_grad():
            L = self.M
            P = obj.probabilities(L)
            n = obj.n
            rowmax = torch.full((n,), -torch.inf, dtype=P.dtype, device=P.device)
            rowmax.scatter_reduce_(0, obj.rows, P, reduce="amax", include_self=True)
            keep = (P >= self.prune_below) | (P >= rowmax[obj.rows])
            rows, cols = obj.rows[keep], obj.cols[keep]
            L_keep = L[keep]
            m1, m2 = self._adam.exp_avg[keep], self._adam.exp_avg_sq[keep]
            lmax = torch.full((n,), -torch.inf, dtype=L.dtype, device=L.device)
            lmax.scatter_reduce_(0, rows, L_keep, reduce="amax", include_self=True)
            lse = lmax + torch.log(
                torch.zeros(n, dtype=L.dtype, device=L.device).index_add_(0, rows, torch.exp(L_keep - lmax[rows]))
            )
            rows2, cols2, pos = merge_pairs(rows, cols, new_rows, new_cols, n)
            L2 = lse[rows2] - NEW_PAIR_LOGIT_OFFSET
            L2[pos] = L_keep
            a1 = torch.zeros_like(L2)
            a2 = torch.zeros_like(L2)
            a1[pos] = m1
            a2[pos] = m2
        self.M = L2
        self._adam.param, self._adam.exp_avg, self._adam.exp_avg_sq = L2, a1, a2
        self.objective = CandidateObjective(self.S, self.G, self.weights, rows2, cols2, d=self.d, w=obj.w)
        self.pairs = (rows2, cols2)

    def workers(self) -> int:
        """Worker threads of the exact engine on the CPU (each runs single-threaded kernels).

        Small mappings use one: thread hand-offs cost more than they save there.
        """
        if self.device.type != "cpu":
            return 1
        if self.num_threads is not None:
            return max(1, self.num_threads)
        if self.S.shape[0] * self.G.shape[0] < SMALL_PROBLEM:
            return 1
        return max(1, torch.get_num_threads())

    def threads(self) -> int:
        """torch's intra-op threads during an epoch.

        Always one on the CPU for the exact engine, which parallelises over row shards itself
        (see :class:`~napari_spatial_impute.objective.DenseObjective`): torch's own parallel
        regions were 5-10x slower on a 2-core machine with another busy process (measured on
        the bundled pair and on 4,000 x 20,000 simulated cells). The lean and constrained
        engines use torch's setting for large problems.
        """
        if self.pairs is None and not self.constrained:
            return 1
        if self.num_threads is not None:
            return self.num_threads
        if self.M.numel() < SMALL_PROBLEM:
            return 1
        return torch.get_num_threads()

    def iterate(self, n_epochs: int, cancel: CancelFlag = None) -> Iterator[EpochInfo]:
        """Yield an :class:`EpochInfo` after each of ``n_epochs`` epochs.

        Stops with :class:`MappingCancelled` when ``cancel`` is set before an epoch.
        """
        for e in range(n_epochs):
            if _is_cancelled(cancel):
                raise MappingCancelled(f"mapping cancelled after {e} of {n_epochs} epochs")
            before = torch.get_num_threads()
            want = self.threads() if self.device.type == "cpu" else before
            if want != before:
                torch.set_num_threads(want)
            try:
                values = self.step()
            finally:
                if want != before:
                    torch.set_num_threads(before)
            yield EpochInfo(e + 1, n_epochs, values)

    def probabilities(self) -> np.ndarray | sp.csr_matrix:
        """Row-stochastic mapping matrix (units x spatial cells), float32.

        Dense numpy for the exact engine, a scipy CSR matrix for the lean engine.
        """
        with torch.no_grad():
            if self.pairs is not None:
                obj = self.objective
                vals = obj.probabilities(self.M).cpu().numpy()
                return sp.csr_matrix(
                    (vals, (obj.rows.cpu().numpy(), obj.cols.cpu().numpy())), shape=(obj.n, obj.s)
                )
            P = torch.softmax(self.M.detach(), dim=1)
            return P.cpu().numpy()

    def filter_probabilities(self) -> np.ndarray | None:
        """Constrained mode's per-cell filter probabilities, else ``None``."""
        if self.F is None:
            return None
        with torch.no_grad():
            return torch.sigmoid(self.F.detach()).cpu().numpy()

    def objective_terms(self) -> dict[str, float]:
        """The objective's terms at the current mapping, without updating it."""
        if self.pairs is not None:
            return self.objective.value_and_grad(self.M, want_entropy=True)[0]
        if self.constrained:
            with torch.no_grad():
                t = tangram_loss(self.M, self.S, self.G, self.weights, d=self.d, F=self.F, target_count=self.target_count)
                return {k: float(v) for k, v in t.items()}
        return self.objective.terms(self.M)


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
            totals = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
            if totals.sum() <= 0:
                raise InputError("rna_count_based density needs counts; the spatial data sums to 0.")
            return (totals / totals.sum()).astype(np.float32), "rna_count_based"
        raise InputError(
            f"density {density!r} is not known; use 'uniform', 'rna_count_based', 'none' or a vector."
        )
    vec = np.asarray(density, dtype=np.float64).ravel()
    if vec.shape[0] != n:
        raise InputError(f"density vector has {vec.shape[0]} values; expected one per spatial cell ({n}).")
    if not np.all(np.isfinite(vec)) or (vec < 0).any() or vec.sum() <= 0:
        raise InputError("density vector must be finite, non-negative and not all zero.")
    return (vec / vec.sum()).astype(np.float32), "custom"


def gene_sparsity(X: np.ndarray) -> np.ndarray:
    """Fraction of zero entries per column (tangram-sc's ``sparsity``)."""
    return 1.0 - np.count_nonzero(X, axis=0) / max(X.shape[0], 1)


def cosine_per_gene(pred: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Cosine similarity of each column of ``pred`` with the same column of ``measured``."""
    pred = np.asarray(pred, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    num = (pred * measured).sum(0)
    den = np.linalg.norm(pred, axis=0) * np.linalg.norm(measured, axis=0)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


@dataclass
class MappingResult:
    """A learned mapping with what is needed to project genes and annotations.

    Attributes
    ----------
    probabilities
        Row-stochastic mapping, reference units (cells or clusters) x spatial cells, float32:
        dense numpy (exact engine) or scipy CSR (lean engine).
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
        The neighbourhood ensemble's weights (spatial cells x reference cells, rows sum to 1),
        or ``None`` when it was not computed.
    calibration
        Prediction-interval and reliability calibration
        (:class:`~napari_spatial_impute.uncertainty.Calibration`) or ``None``.
    """

    probabilities: np.ndarray | sp.csr_matrix
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

    @property
    def training_score(self) -> float:
        """Mean cosine similarity of the training genes at the final mapping."""
        return float(np.nanmean(self.train_genes_df["train_score"].to_numpy()))

    def project_genes(self, genes: Sequence[str] | None = None, method: str = "auto") -> ad.AnnData:
        """Impute genes in space; see :func:`napari_spatial_impute.project.project_genes`."""
        from .project import project_genes

        return project_genes(self, genes=genes, method=method)

    def cluster_probabilities(self, key: str | None = None, source: str = "auto") -> pd.DataFrame:
        """Cluster probabilities per spatial cell; see :func:`~napari_spatial_impute.project.project_cell_annotations`."""
        from .project import project_cell_annotations

        return project_cell_annotations(self, key, source=source)

    def to_anndata(self, genes: Sequence[str] | None = None, **kwargs: Any) -> ad.AnnData:
        """The spatial result as AnnData; see :func:`napari_spatial_impute.result.result_to_anndata`."""
        from .result import result_to_anndata

        return result_to_anndata(self, genes=genes, **kwargs)


def map_cells_to_space(
    reference: ad.AnnData,
    spatial: ad.AnnData,
    *,
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
    tol: float | None = None,
    patience: int = 50,
    neighbours: bool = True,
    uncertainty: bool = True,
) -> MappingResult:
    """Map reference cells (or clusters) onto spatial cells with the Tangram objective.

    Parameters
    ----------
    reference
        Dissociated single-cell data (all genes), cells x genes.
    spatial
        Spatial data with ``obsm["spatial"]``, cells x panel genes.
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
        with the cells. ``"auto"``: lean in cells mode when the reference has more cells than
        ``candidates`` and the dense mapping has over 50 million entries, else exact.
    candidates, reverse_candidates
        Candidate pairs of the lean engine.
    tol
        Stop early when the training score gained less than ``tol`` over the last ``patience``
        epochs (``None``: always run ``epochs``). The run's ``params`` record the epochs done.
    patience
        Window of ``tol``.
    neighbours
        Also compute the neighbourhood ensemble (:mod:`napari_spatial_impute.neighbours`) from
        the training genes; it is then the default for imputed genes and cluster probabilities
        (more accurate than the Tangram map on every benchmark pair), while the Tangram map
        stays available (``method="probabilistic"``/``"argmax"``, ``source="tangram"``).
    uncertainty
        With ``neighbours``: calibrate prediction intervals and per-gene reliability on the
        training genes (:mod:`napari_spatial_impute.uncertainty`).

    Returns
    -------
    A :class:`MappingResult`.
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise InputError(f"mode {mode!r} is not known; use one of {', '.join(MODES)}.")
    if epochs < 0:
        raise InputError(f"epochs must be 0 or more, got {epochs}.")
    if engine not in ENGINES:
        raise InputError(f"engine {engine!r} is not known; use one of {', '.join(ENGINES)}.")
    if candidates < 1 or reverse_candidates < 0:
        raise InputError("candidates must be 1 or more and reverse_candidates 0 or more.")
    if learning_rate <= 0:
        raise InputError(f"learning rate must be positive, got {learning_rate}.")
    if lambda_g1 == 0:
        raise InputError("lambda_g1 cannot be 0: the gene-wise similarity is the objective.")
    transform = check_transform(transform)
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
    dev = resolve_device(device)
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

    d, d_name = density_prior(spatial, density)
    if mode in ("clusters", "constrained") and d is None:
        d, d_name = density_prior(spatial, "uniform")
    if lambda_d is None:
        lambda_d = 1.0 if d is not None else 0.0
    if lambda_d > 0 and d is None:
        raise InputError("lambda_d > 0 needs a density prior; use density='uniform' or 'rna_count_based'.")

    n_units = S.shape[0]
    if engine == "auto":
        lean = mode == "cells" and n_units > candidates and n_units * spatial.n_obs > AUTO_LEAN_ENTRIES
    else:
        lean = engine == "lean" and n_units > candidates
    if engine == "lean" and mode == "constrained":
        raise InputError("the lean engine does not support constrained mode; use engine='exact'.")
    if check_memory:
        est = (
            estimate_lean_mapping(n_units, spatial.n_obs, S.shape[1], candidates, reverse_candidates)
            if lean
            else estimate_dense_mapping(n_units, spatial.n_obs, S.shape[1])
        )
        check_fits(est, dev, mode)

    weights = Weights(lambda_g1, lambda_g2, float(lambda_d), lambda_r, lambda_count, lambda_f_reg)
    t_setup = time.perf_counter()
    pairs = None
    if lean:
        pairs = candidate_pairs(torch.from_numpy(S), torch.from_numpy(G), candidates, reverse_candidates)
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
        if tol is not None and len(scores) > patience and scores[-1] - scores[-1 - patience] < tol:
            break
    t_done = time.perf_counter()
    P = mapper.probabilities()
    W = None
    if neighbours:
        raw = transform == "none" and describe_values(reference.X) == "raw counts"
        S_cells = S if mode != "clusters" else dense_columns(ref_vals, plan.training_reference)
        W = neighbour_weights(similarity_values(S_cells, raw), similarity_values(G, raw))
    t_neigh = time.perf_counter()

    pred = np.asarray(P.T @ S)
    if mode == "constrained":
        F = mapper.filter_probabilities()
        pred = np.asarray(P.T @ (S * F[:, None]))
    scores = cosine_per_gene(pred, G)
    sp_sc = gene_sparsity(S if mode != "clusters" else dense_columns(ref_vals, plan.training_reference))
    sp_sp = gene_sparsity(G)
    train_df = pd.DataFrame(
        {
            "train_score": scores.astype(np.float64),
            "sparsity_sc": sp_sc,
            "sparsity_sp": sp_sp,
            "sparsity_diff": sp_sp - sp_sc,
        },
        index=pd.Index(plan.training_reference, name="gene"),
    )
    params: dict[str, Any] = {
        "mode": mode,
        "cluster_key": cluster_key or "",
        "genes": genes if isinstance(genes, str) else "list",
        "n_markers": n_markers,
        "density": d_name,
        "epochs": epochs,
        "epochs_done": mapper.epochs_done,
        "tol": -1.0 if tol is None else float(tol),
        "learning_rate": learning_rate,
        "lambda_g1": lambda_g1,
        "lambda_g2": lambda_g2,
        "lambda_d": float(lambda_d),
        "lambda_r": lambda_r,
        "lambda_count": lambda_count,
        "lambda_f_reg": lambda_f_reg,
        "transform": transform,
        "seed": -1 if seed is None else int(seed),
        "device": str(dev),
        "engine": "lean" if lean else "exact",
        "candidates": candidates if lean else 0,
        "reverse_candidates": reverse_candidates if lean else 0,
        "n_pairs": int(pairs[0].shape[0]) if lean else int(n_units) * int(spatial.n_obs),
        "reference_values": _describe(reference),
        "spatial_values": _describe(spatial),
    }
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
        history={k: np.asarray(v, dtype=np.float64) for k, v in mapper.history.items()},
        params=params,
        cluster_key=cluster_key,
        filter_probabilities=mapper.filter_probabilities(),
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
        from .uncertainty import calibrate

        t_cal = time.perf_counter()
        result.calibration = calibrate(result, seed=0 if seed is None else int(seed))
        result.timings["calibration_s"] = time.perf_counter() - t_cal
        result.timings["total_s"] = time.perf_counter() - t0
    return result


def _describe(adata: ad.AnnData) -> str:
    return describe_values(adata.X)
