"""The optimiser: the epoch loop over one engine (exact, lean or constrained).

The engines implement :class:`~napari_spatial_impute.core.engine.engines.MappingObjective`; the
mapper seeds the initial logits, picks the engine, runs the epochs (cancel, per-epoch info,
history) and counts them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from napari_spatial_impute._errors import InputError, MappingCancelled
from napari_spatial_impute.core.engine.engines import (
    ConstrainedObjective,
    ExactObjective,
    LeanObjective,
    MappingObjective,
    threads_for,
)
from napari_spatial_impute.core.engine.objective import Weights

CancelFlag = threading.Event | Callable[[], bool] | None
#: The exact engine splits mappings with at least this many elements over worker threads. On a
#: quiet 2-core machine two shards were 1.7-1.8x faster than one from 1,308 x 750 up to
#: 4,000 x 12,000 (measured here); a threshold of SMALL_PROBLEM, chosen on a loaded machine, left
#: 2,000 x 6,000 single-threaded at 1.8x tangram-sc's speed instead of 3.4x.
EXACT_SHARDS_MIN = 1 << 18
#: Engine probe (:func:`probe_engine_costs`): epochs timed per engine after one warm-up epoch,
#: and the size (mapping entries) of the exact engine's probe on a subset of reference rows.
PROBE_EPOCHS = 3
PROBE_EXACT_ENTRIES = 1 << 21


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


def is_cancelled(cancel: CancelFlag) -> bool:
    """Whether ``cancel`` (an event, a callable or ``None``) asks to stop."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


class TangramMapper:
    """Optimise the Tangram objective for a mapping matrix.

    Cells and clusters modes use :class:`~napari_spatial_impute.core.engine.engines.ExactObjective`
    (exact objective, hand-derived gradient, block-wise Adam) or, with ``pairs``,
    :class:`~napari_spatial_impute.core.engine.engines.LeanObjective`. Constrained mode uses
    :class:`~napari_spatial_impute.core.engine.engines.ConstrainedObjective` (autograd).

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
        self.refresh_every = refresh_every
        self.refresh_candidates = refresh_candidates
        self.prune_below = prune_below
        self.epochs_done = 0
        self.objective: MappingObjective
        if pairs is not None:
            if constrained:
                raise InputError(
                    "the lean engine does not support constrained mode; use engine='exact'."
                )
            rows, cols = (p.to(self.device) for p in pairs)
            M = torch.randn((rows.shape[0],), generator=gen, dtype=dt).to(self.device)
            self.objective = LeanObjective(
                self.S,
                self.G,
                weights,
                rows,
                cols,
                M,
                d=self.d,
                w=self.d_source,
                learning_rate=learning_rate,
                num_threads=num_threads,
                refresh_every=refresh_every,
                refresh_candidates=refresh_candidates,
                prune_below=prune_below,
            )
        else:
            if init is not None:
                init = np.asarray(init, dtype=np.float32)
                if init.shape != (n, s):
                    raise InputError(f"initial mapping has shape {init.shape}; expected {(n, s)}.")
                M = torch.as_tensor(init).to(self.device, dtype=dt).clone()
            else:
                M = torch.randn((n, s), generator=gen, dtype=dt).to(self.device)
            if constrained:
                F = torch.randn((n,), generator=gen, dtype=dt).to(self.device)
                self.objective = ConstrainedObjective(
                    self.S,
                    self.G,
                    weights,
                    M,
                    F,
                    d=self.d,
                    target_count=target_count,
                    learning_rate=learning_rate,
                    num_threads=num_threads,
                )
            else:
                self.objective = ExactObjective(
                    self.S,
                    self.G,
                    weights,
                    M,
                    d=self.d,
                    d_source=self.d_source,
                    learning_rate=learning_rate,
                    workers=self.workers(),
                )
        self.history: dict[str, list[float]] = {k: [] for k in self.objective.terms}

    @property
    def M(self) -> torch.Tensor:
        """The current logits (dense, or one per candidate pair for the lean engine)."""
        return self.objective.M

    @property
    def F(self) -> torch.Tensor | None:
        """Constrained mode's filter logits, else ``None``."""
        return self.objective.F

    @property
    def pairs(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The lean engine's current candidate pairs, else ``None`` (dense mapping)."""
        return self.objective.pairs

    def step(self) -> dict[str, float]:
        """Run one epoch: evaluate the objective at the current mapping, then update it."""
        values = self.objective.step(self.epochs_done)
        for k in self.history:
            self.history[k].append(values.get(k, float("nan")))
        self.epochs_done += 1
        return values

    def release_optimizer(self) -> None:
        """Drop the optimiser's state (Adam's two mapping-sized moments) once training is over."""
        self.objective.release_optimizer()

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
        (see :class:`~napari_spatial_impute.core.engine.engines.ExactObjective`). The lean and
        constrained engines use torch's setting for large problems.
        """
        return self.objective.threads()

    def iterate(self, n_epochs: int, cancel: CancelFlag = None) -> Iterator[EpochInfo]:
        """Yield an :class:`EpochInfo` after each of ``n_epochs`` epochs.

        Stops with :class:`MappingCancelled` when ``cancel`` is set before an epoch.
        """
        for e in range(n_epochs):
            if is_cancelled(cancel):
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
        return self.objective.probabilities()

    def filter_probabilities(self) -> np.ndarray | None:
        """Constrained mode's per-cell filter probabilities, else ``None``."""
        return self.objective.filter_probabilities()


@dataclass(frozen=True)
class EngineCosts:
    """Seconds per epoch of the exact and lean engines, measured on one problem.

    Attributes
    ----------
    lean_epoch_s
        One lean epoch on the problem's own candidate pairs (the fastest of the timed epochs).
    lean_refresh_s
        The lean engine's pair refresh per epoch: one refresh, timed, divided by the refresh
        interval.
    exact_epoch_s
        One exact epoch over all pairs, from probes on ``exact_rows`` reference rows (a straight
        line through them, extrapolated to ``n_units``; measured directly when the probe is the
        whole problem).
    exact_rows
        Reference rows of the exact probes.
    n_units
        Reference rows of the problem.
    """

    lean_epoch_s: float
    lean_refresh_s: float
    exact_epoch_s: float
    exact_rows: tuple[int, ...]
    n_units: int

    @property
    def lean_s(self) -> float:
        """The lean engine's cost per epoch, its pair refresh included."""
        return self.lean_epoch_s + self.lean_refresh_s

    @property
    def lean_wins(self) -> bool:
        """Whether the lean engine is the cheaper per epoch."""
        return self.lean_s < self.exact_epoch_s

    def describe(self) -> str:
        """One line: the choice and the measured costs."""
        lean = self.lean_wins
        ratio = self.exact_epoch_s / self.lean_s if lean else self.lean_s / self.exact_epoch_s
        rows = (
            "all reference cells"
            if self.exact_rows == (self.n_units,)
            else f"extrapolated from {' and '.join(f'{r:,}' for r in self.exact_rows)} of "
            f"{self.n_units:,} reference cells"
        )
        return (
            f"auto chose the {'lean' if lean else 'exact'} engine, {ratio:.1f}x cheaper per epoch "
            f"as measured here: lean {self.lean_s * 1e3:.1f} ms/epoch ({self.lean_epoch_s * 1e3:.1f} "
            f"ms + {self.lean_refresh_s * 1e3:.1f} ms pair refresh), exact "
            f"{self.exact_epoch_s * 1e3:.1f} ms/epoch ({rows})"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epochs(mapper: TangramMapper, epochs: int = PROBE_EPOCHS) -> float:
    """Seconds of the fastest of ``epochs`` epochs of ``mapper``, after one warm-up epoch.

    The fastest, not the mean: on a shared machine other processes only ever add time.
    """
    best = float("inf")
    it = mapper.iterate(epochs + 1)
    _sync(mapper.device)
    next(it)  # warm-up: first-touch allocations, kernel compilation
    for _ in range(epochs):
        _sync(mapper.device)
        t0 = time.perf_counter()
        next(it)
        _sync(mapper.device)
        best = min(best, time.perf_counter() - t0)
    return best


def probe_engine_costs(
    S: np.ndarray,
    G: np.ndarray,
    weights: Weights,
    pairs: tuple[torch.Tensor, torch.Tensor],
    *,
    d: np.ndarray | None = None,
    learning_rate: float = 0.1,
    seed: int | None = 0,
    device: torch.device | str = "cpu",
    epochs: int = PROBE_EPOCHS,
    refresh_every: int = 25,
    probe_entries: int = PROBE_EXACT_ENTRIES,
    cancel: CancelFlag = None,
) -> EngineCosts:
    """Measure the exact and lean engines' cost per epoch on one problem (cells mode).

    The lean engine runs ``epochs`` epochs (after a warm-up) on the problem's own candidate
    ``pairs``, then one pair refresh, which it makes every ``refresh_every`` epochs (its time is
    added per epoch). The exact engine runs
    the same on the whole problem when it has at most ``2 * probe_entries`` entries; otherwise on
    two subsets of evenly spaced reference rows (about ``probe_entries`` and twice that many
    entries) with the worker threads of the whole problem, and its time per epoch is the straight
    line through the two, at all rows (part of an exact epoch grows with the spatial cells only).
    Nothing here changes the mapping that is trained afterwards.
    """
    dev = torch.device(device)
    n, s = int(S.shape[0]), int(G.shape[0])
    if is_cancelled(cancel):
        raise MappingCancelled("mapping cancelled before training")
    lean = TangramMapper(
        S, G, weights, d=d, learning_rate=learning_rate, seed=seed, device=dev, pairs=pairs
    )
    lean_s = time_epochs(lean, epochs)
    refresh_s = 0.0
    if isinstance(lean.objective, LeanObjective) and refresh_every:
        with threads_for(lean.M.numel()) if dev.type == "cpu" else nullcontext():
            _sync(dev)
            t0 = time.perf_counter()
            lean.objective.refresh_pairs()
            _sync(dev)
            refresh_s = time.perf_counter() - t0
    del lean
    # the exact probes run with the worker threads of the whole problem (TangramMapper.workers)
    full_workers = 1
    if dev.type == "cpu" and n * s >= EXACT_SHARDS_MIN:
        full_workers = max(1, torch.get_num_threads())
    if n * s <= 2 * probe_entries:
        row_sets = [np.arange(n)]
    else:
        r1 = int(min(max(8, probe_entries // max(s, 1)), max(1, n // 4)))
        row_sets = [np.linspace(0, n - 1, r, dtype=np.int64) for r in (r1, 2 * r1)]
    times = []
    for rows in row_sets:
        if is_cancelled(cancel):
            raise MappingCancelled("mapping cancelled before training")
        exact = TangramMapper(
            S[rows],
            G,
            weights,
            d=d,
            learning_rate=learning_rate,
            seed=seed,
            device=dev,
            num_threads=full_workers,
        )
        times.append(time_epochs(exact, epochs))
        del exact
    if len(row_sets) == 1:
        exact_s = times[0]
    else:
        (r1, r2), (t1, t2) = (len(r) for r in row_sets), times
        slope = (t2 - t1) / (r2 - r1)
        # a negative slope is timing noise: then scale the larger probe with the rows
        exact_s = t1 + slope * (n - r1) if slope > 0 else t2 * n / r2
    return EngineCosts(
        lean_epoch_s=lean_s,
        lean_refresh_s=refresh_s / max(refresh_every, 1),
        exact_epoch_s=exact_s,
        exact_rows=tuple(len(r) for r in row_sets),
        n_units=n,
    )
