"""The one interface :class:`~napari_spatial_impute.core.engine.mapper.TangramMapper` drives.

An engine owns the trainable state (the mapping's logits, constrained mode's filter logits) and its
optimiser, and runs one epoch at a time. Three engines implement :class:`MappingObjective`:

* :class:`ExactObjective`: the exact dense objective (:class:`~napari_spatial_impute.core.engine.objective.DenseObjective`'s
  row blocks, block-wise Adam, the fused kernel on the CPU); cells and clusters modes.
* :class:`LeanObjective`: the objective on candidate pairs
  (:class:`~napari_spatial_impute.core.engine.lean.CandidateObjective`) with its periodic pair refresh.
* :class:`ConstrainedObjective`: autograd on the reference objective with tangram-sc's cell filter.

The mapper keeps seeding and the initial logits, the epoch loop (cancel, per-epoch info, history)
and the count of epochs done.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

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

#: A pair added by the lean engine starts this far (in log-probability) below its row's total.
NEW_PAIR_LOGIT_OFFSET = 8.0
#: Mappings with fewer elements than this run single-threaded on the CPU.
SMALL_PROBLEM = 1 << 24
#: :func:`threads_for` measures over this many seconds how busy other processes keep the CPU.
BUSY_SAMPLE_S = 0.1
#: Loss terms constrained mode reports on top of :data:`TERMS`.
CONSTRAINED_TERMS = (*TERMS, "count_reg", "f_reg")


class MappingObjective(Protocol):
    """What the mapper needs from an engine."""

    @property
    def terms(self) -> tuple[str, ...]:
        """Names of the loss terms :meth:`step` reports (the mapper's history keys)."""
        ...

    @property
    def M(self) -> torch.Tensor:
        """The current logits: dense (units x spatial cells) or one per candidate pair."""
        ...

    @property
    def F(self) -> torch.Tensor | None:
        """Constrained mode's filter logits, else ``None``."""
        ...

    @property
    def pairs(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The lean engine's current ``(rows, cols)`` candidate pairs, else ``None``."""
        ...

    def step(self, epoch: int) -> dict[str, float]:
        """Run epoch ``epoch`` (0-based): the loss terms at the current logits, then one update."""
        ...

    def threads(self) -> int:
        """torch's intra-op threads during an epoch on the CPU."""
        ...

    def release_optimizer(self) -> None:
        """Drop the optimiser's state once training is over (later steps raise)."""
        ...

    def probabilities(self) -> np.ndarray | sp.csr_matrix:
        """Row-stochastic mapping matrix (units x spatial cells), float32."""
        ...

    def filter_probabilities(self) -> np.ndarray | None:
        """Constrained mode's per-cell filter probabilities, else ``None``."""
        ...


def torch_threads(numel: int, num_threads: int | None) -> int:
    """torch's threads for an engine that relies on torch's own parallelism."""
    if num_threads is not None:
        return num_threads
    if numel < SMALL_PROBLEM:
        return 1
    return torch.get_num_threads()


def cores_busy_elsewhere(window: float = BUSY_SAMPLE_S) -> float | None:
    """CPU cores that other processes kept busy over the next ``window`` seconds.

    The machine's busy time (``/proc/stat``) less this process's own CPU time; ``None`` where
    ``/proc/stat`` cannot be read (not Linux).
    """

    def busy() -> tuple[float, float]:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy
        return float(sum(fields[:8]) - fields[3] - fields[4]), time.process_time()

    try:
        tick = float(os.sysconf("SC_CLK_TCK"))
        (b0, own0), t0 = busy(), time.perf_counter()
        time.sleep(window)
        (b1, own1), t1 = busy(), time.perf_counter()
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return max(0.0, ((b1 - b0) / tick - (own1 - own0)) / max(t1 - t0, 1e-6))


@contextmanager
def threads_for(numel: int, num_threads: int | None = None) -> Iterator[int]:
    """torch's intra-op threads set to :func:`torch_threads` for the block, then restored.

    Problems below :data:`SMALL_PROBLEM` elements run on one thread: their parallel regions are
    too short to pay for waking a second thread, and on a machine where another process holds a
    core each region waits for the descheduled thread. The default 10-fold ``evaluate`` of the
    MERFISH pair took 17-35 s with torch's two threads and 3.9-4.3 s with one while another
    process kept one of the two cores busy, with identical results (measured here; see
    docs/benchmarks.md, "Fast defaults (issue 14)").

    Larger problems use torch's threads, but no more than the cores other processes leave free
    (:func:`cores_busy_elsewhere`, sampled once on entry): with the 2-core machine loaded by
    others, the ensemble's neighbour search at the seed's shape took 10.3-10.8 s on one thread
    and 14.8-15.3 s on two, with identical weights.
    """
    want = torch_threads(numel, num_threads)
    if num_threads is None and want > 1:
        busy = cores_busy_elsewhere()
        if busy is not None:
            want = max(1, min(want, round((os.cpu_count() or want) - busy)))
    before = torch.get_num_threads()
    if want != before:
        torch.set_num_threads(want)
    try:
        yield want
    finally:
        if want != before:
            torch.set_num_threads(before)


def _dense_probabilities(M: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        P = torch.softmax(M.detach(), dim=1)
        return P.cpu().numpy()


def _released(adam: BlockAdam | None) -> BlockAdam:
    if adam is None:
        raise RuntimeError("the optimizer was released (release_optimizer); training is over")
    return adam


class ExactObjective:
    """Exact dense engine: :class:`DenseObjective` with block-wise Adam (fused kernel on the CPU).

    It parallelises over row shards itself (``workers`` threads), so torch runs one thread: torch's
    own parallel regions were 5-10x slower on a 2-core machine with another busy process (measured
    on the bundled pair and on 4,000 x 20,000 simulated cells).
    """

    terms = TERMS
    F = None
    pairs = None

    def __init__(
        self,
        S: torch.Tensor,
        G: torch.Tensor,
        weights: Weights,
        M: torch.Tensor,
        *,
        d: torch.Tensor | None,
        d_source: torch.Tensor | None,
        learning_rate: float,
        workers: int,
    ) -> None:
        self.M = M
        self.objective = DenseObjective(S, G, weights, d=d, d_source=d_source, workers=workers)
        self._adam: BlockAdam | None = BlockAdam(M, lr=learning_rate)

    def step(self, epoch: int) -> dict[str, float]:
        adam = _released(self._adam)
        adam.begin_step()
        return self.objective.value_and_update(self.M, adam)

    def threads(self) -> int:
        return 1

    def release_optimizer(self) -> None:
        self._adam = None

    def probabilities(self) -> np.ndarray:
        return _dense_probabilities(self.M)

    def filter_probabilities(self) -> None:
        return None


class LeanObjective:
    """Lean engine: :class:`CandidateObjective` on candidate pairs, with block-wise Adam.

    Every ``refresh_every`` epochs it adds for each spatial cell the ``refresh_candidates`` pairs
    whose mass would lower the loss most and drops pairs whose probability fell below
    ``prune_below`` (0 disables refreshing); see
    :class:`~napari_spatial_impute.core.engine.mapper.TangramMapper`.
    """

    terms = TERMS
    F = None

    def __init__(
        self,
        S: torch.Tensor,
        G: torch.Tensor,
        weights: Weights,
        rows: torch.Tensor,
        cols: torch.Tensor,
        M: torch.Tensor,
        *,
        d: torch.Tensor | None,
        w: torch.Tensor | None,
        learning_rate: float,
        num_threads: int | None,
        refresh_every: int,
        refresh_candidates: int,
        prune_below: float,
    ) -> None:
        self.S, self.G, self.weights, self.d = S, G, weights, d
        self.M = M
        self.pairs: tuple[torch.Tensor, torch.Tensor] = (rows, cols)
        self.objective = CandidateObjective(S, G, weights, rows, cols, d=d, w=w)
        self._adam: BlockAdam | None = BlockAdam(M, lr=learning_rate)
        self.num_threads = num_threads
        self.refresh_every = refresh_every
        self.refresh_candidates = refresh_candidates
        self.prune_below = prune_below

    def step(self, epoch: int) -> dict[str, float]:
        values, grad = self.objective.value_and_grad(self.M)
        adam = _released(self._adam)
        adam.begin_step()
        adam(slice(None), grad)
        if self.refresh_every and (epoch + 1) % self.refresh_every == 0:
            self.refresh_pairs()
            _malloc.trim()  # the pair arrays changed size: free blocks of the old sizes
        return values

    def refresh_pairs(self) -> None:
        """Add the most promising pairs, drop negligible ones (working set)."""
        obj = self.objective
        adam = _released(self._adam)
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

    def threads(self) -> int:
        return torch_threads(self.M.numel(), self.num_threads)

    def release_optimizer(self) -> None:
        self._adam = None

    def probabilities(self) -> sp.csr_matrix:
        """A scipy CSR matrix with the candidate pairs' probabilities."""
        obj = self.objective
        with torch.no_grad():
            vals = obj.probabilities(self.M).cpu().numpy()
        return sp.csr_matrix(
            (vals, (obj.rows.cpu().numpy(), obj.cols.cpu().numpy())), shape=(obj.n, obj.s)
        )

    def filter_probabilities(self) -> None:
        return None


class ConstrainedObjective:
    """Constrained mode: autograd on :func:`tangram_loss` with tangram-sc's cell filter ``F``."""

    terms = CONSTRAINED_TERMS
    pairs = None

    def __init__(
        self,
        S: torch.Tensor,
        G: torch.Tensor,
        weights: Weights,
        M: torch.Tensor,
        F: torch.Tensor,
        *,
        d: torch.Tensor | None,
        target_count: int | None,
        learning_rate: float,
        num_threads: int | None,
    ) -> None:
        self.S, self.G, self.weights, self.d = S, G, weights, d
        self.target_count = target_count
        self.num_threads = num_threads
        self.M = M
        self.F = F
        self.M.requires_grad_(True)
        self.F.requires_grad_(True)
        self._opt: torch.optim.Adam | None = torch.optim.Adam([self.M, self.F], lr=learning_rate)

    def step(self, epoch: int) -> dict[str, float]:
        opt = self._opt
        if opt is None:
            raise RuntimeError("the optimizer was released (release_optimizer); training is over")
        terms_t = tangram_loss(
            self.M,
            self.S,
            self.G,
            self.weights,
            d=self.d,
            F=self.F,
            target_count=self.target_count,
        )
        opt.zero_grad()
        torch.autograd.backward(terms_t["total_loss"])
        opt.step()
        return {k: float(v.detach()) for k, v in terms_t.items()}

    def threads(self) -> int:
        return torch_threads(self.M.numel(), self.num_threads)

    def release_optimizer(self) -> None:
        self._opt = None

    def probabilities(self) -> np.ndarray:
        return _dense_probabilities(self.M)

    def filter_probabilities(self) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(self.F.detach()).cpu().numpy()
