"""The optimiser: Adam on the Tangram objective, exact (dense) or lean (candidate pairs)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from napari_spatial_impute._errors import InputError, MappingCancelled
from napari_spatial_impute.core.engine import memory as _malloc
from napari_spatial_impute.core.engine.candidates import merge_pairs
from napari_spatial_impute.core.engine.lean import CandidateObjective
from napari_spatial_impute.core.engine.objective import (
    TERMS,
    BlockAdam,
    DenseObjective,
    Weights,
    tangram_loss,
)

CancelFlag = threading.Event | Callable[[], bool] | None
#: A pair added by the lean engine starts this far (in log-probability) below its row's total.
NEW_PAIR_LOGIT_OFFSET = 8.0
#: Mappings with fewer elements than this run single-threaded on the CPU.
SMALL_PROBLEM = 1 << 24
#: The exact engine splits mappings with at least this many elements over worker threads. On a
#: quiet 2-core machine two shards were 1.7-1.8x faster than one from 1,308 x 750 up to
#: 4,000 x 12,000 (measured here); a threshold of SMALL_PROBLEM, chosen on a loaded machine, left
#: 2,000 x 6,000 single-threaded at 1.8x tangram-sc's speed instead of 3.4x.
EXACT_SHARDS_MIN = 1 << 18


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

    Cells and clusters modes use :class:`~napari_spatial_impute.core.engine.objective.DenseObjective` (exact
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
        :func:`~napari_spatial_impute.core.engine.candidates.candidate_pairs`); ``None`` maps densely.
    refresh_every
        Lean engine: every this many epochs, add for each spatial cell the
        ``refresh_candidates`` pairs whose mass would lower the loss most and drop pairs whose
        probability fell below ``prune_below`` (0 disables refreshing). Each refresh costs one
        ``n_spatial x n_reference x n_genes`` product; doubling the interval after each one
        reached a lower score for the same time at the seed's scale (measured here: 0.903 after
        1000 epochs with 5 refreshes vs 0.904 after 400 with 16).
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
        self.d = (
            None
            if d is None
            else torch.as_tensor(np.asarray(d, dtype=np.float32), device=self.device)
        )
        self.d_source = (
            None
            if d_source is None
            else torch.as_tensor(np.asarray(d_source, dtype=np.float32), device=self.device)
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
        # set below for the lean and exact engines; constrained mode uses autograd instead
        self.objective: CandidateObjective | DenseObjective
        self._adam: BlockAdam | None = None
        if pairs is not None:
            if constrained:
                raise InputError(
                    "the lean engine does not support constrained mode; use engine='exact'."
                )
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
                self.M,
                self.S,
                self.G,
                self.weights,
                d=self.d,
                F=self.F,
                target_count=self.target_count,
            )
            self._torch_opt.zero_grad()
            torch.autograd.backward(terms_t["total_loss"])
            self._torch_opt.step()
            values = {k: float(v.detach()) for k, v in terms_t.items()}
        elif self.pairs is not None:
            values, grad = self._lean_objective().value_and_grad(self.M)
            adam = self._optimizer()
            adam.begin_step()
            adam(slice(None), grad)
            if self.refresh_every and (self.epochs_done + 1) % self.refresh_every == 0:
                self._refresh_pairs()
                _malloc.trim()  # the pair arrays changed size: free blocks of the old sizes
        else:
            objective = self.objective
            if not isinstance(objective, DenseObjective):
                raise RuntimeError("a mapper without candidate pairs uses the dense objective")
            adam = self._optimizer()
            adam.begin_step()
            values = objective.value_and_update(self.M, adam)
        for k in self.history:
            self.history[k].append(values.get(k, float("nan")))
        self.epochs_done += 1
        return values

    def release_optimizer(self) -> None:
        """Drop Adam's moments (two mapping-sized arrays) once training is over."""
        self._adam = None

    def _optimizer(self) -> BlockAdam:
        """The block-wise Adam of the lean and exact engines (until it is released)."""
        if self._adam is None:
            raise RuntimeError("the optimizer was released (release_optimizer); training is over")
        return self._adam

    def _lean_objective(self) -> CandidateObjective:
        """The lean engine's objective over its candidate pairs."""
        if not isinstance(self.objective, CandidateObjective):
            raise RuntimeError("only the lean engine (pairs given) has a candidate objective")
        return self.objective

    def _refresh_pairs(self) -> None:
        """Lean engine: add the most promising pairs, drop negligible ones (working set)."""
        obj = self._lean_objective()
        adam = self._optimizer()
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
            m1, m2 = adam.exp_avg[keep], adam.exp_avg_sq[keep]
            lmax = torch.full((n,), -torch.inf, dtype=L.dtype, device=L.device)
            lmax.scatter_reduce_(0, rows, L_keep, reduce="amax", include_self=True)
            lse = lmax + torch.log(
                torch.zeros(n, dtype=L.dtype, device=L.device).index_add_(
                    0, rows, torch.exp(L_keep - lmax[rows])
                )
            )
            rows2, cols2, pos = merge_pairs(rows, cols, new_rows, new_cols, n)
            L2 = lse[rows2] - NEW_PAIR_LOGIT_OFFSET
            L2[pos] = L_keep
            a1 = torch.zeros_like(L2)
            a2 = torch.zeros_like(L2)
            a1[pos] = m1
            a2[pos] = m2
        self.M = L2
        adam.param, adam.exp_avg, adam.exp_avg_sq = L2, a1, a2
        self.objective = CandidateObjective(
            self.S, self.G, self.weights, rows2, cols2, d=self.d, w=obj.w
        )
        self.pairs = (rows2, cols2)

    def workers(self) -> int:
        """Worker threads of the exact engine on the CPU (each runs single-threaded kernels).

        Tiny mappings (below :data:`EXACT_SHARDS_MIN` elements) use one.
        """
        if self.device.type != "cpu":
            return 1
        if self.num_threads is not None:
            return max(1, self.num_threads)
        if self.S.shape[0] * self.G.shape[0] < EXACT_SHARDS_MIN:
            return 1
        return max(1, torch.get_num_threads())

    def threads(self) -> int:
        """torch's intra-op threads during an epoch.

        Always one on the CPU for the exact engine, which parallelises over row shards itself
        (see :class:`~napari_spatial_impute.core.engine.objective.DenseObjective`): torch's own parallel
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
                obj = self._lean_objective()
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
