"""The Tangram map: trained with tangram-sc's objective (:mod:`napari_spatial_impute.core.engine`)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from napari_spatial_impute._errors import InputError, InputWarning
from napari_spatial_impute.core.engine.candidates import candidate_pairs
from napari_spatial_impute.core.engine.engines import threads_for
from napari_spatial_impute.core.engine.mapper import (
    CancelFlag,
    EpochInfo,
    TangramMapper,
    probe_engine_costs,
)
from napari_spatial_impute.core.engine.memory import reuse_freed_memory
from napari_spatial_impute.core.engine.objective import Weights
from napari_spatial_impute.core.engine.resources import (
    GIB,
    available_bytes,
    check_fits,
    estimate_dense_mapping,
    estimate_lean_mapping,
    resolve_device,
)
from napari_spatial_impute.core.engine.search import resolve_search
from napari_spatial_impute.core.maps.base import BuiltMap
from napari_spatial_impute.core.maps.problem import Problem

#: Up to this many reference x spatial pairs the exact engine runs without a probe: on the
#: MERFISH pair (981,000 pairs) both engines train to a plateau in about 2 s and the probe alone
#: took 1 s; on the STARmap split (3.0 M pairs) the lean engine trained 3.3x faster.
SMALL_PAIRS = 1_000_000


def choose_engine(
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
    engine can save work: cells mode, more than :data:`SMALL_PAIRS` pairs, and candidate pairs
    fewer than half of all pairs (with ``candidates`` per spatial cell and
    ``reverse_candidates`` per reference cell; with more, it would do the exact engine's work in
    a sparse layout). An exact mapping that would not fit in memory runs on the lean engine
    without a probe.
    """
    if engine == "auto":
        all_pairs = n_units * n_spatial
        most = n_spatial * min(candidates, n_units) + n_units * min(reverse_candidates, n_spatial)
        if mode != "cells" or 2 * most >= all_pairs or all_pairs <= SMALL_PAIRS:
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


class TangramMap:
    """Reference units placed on spatial cells by training tangram-sc's objective."""

    name = "tangram"
    title = "the Tangram map (trained with tangram-sc's objective)"
    modes: tuple[str, ...] = ("cells", "clusters", "constrained")

    def build(
        self,
        problem: Problem,
        *,
        callback: Callable[[EpochInfo], None] | None = None,
        cancel: CancelFlag = None,
    ) -> BuiltMap:
        t0 = time.perf_counter()
        s = problem.settings
        mode = problem.mode
        dev = resolve_device(s.device)
        S, G = problem.S, problem.G
        n_units, n_sp = S.shape[0], problem.n_spatial
        d, d_name = problem.density()
        lambda_d = s.lambda_d
        if lambda_d is None:
            lambda_d = 1.0 if d is not None else 0.0
        if lambda_d > 0 and d is None:
            raise InputError(
                "lambda_d > 0 needs a density prior; use density='uniform' or 'rna_count_based'."
            )
        choice, engine_note = choose_engine(
            s.engine, mode, n_units, n_sp, S.shape[1], s.candidates, s.reverse_candidates, dev
        )
        if problem.check_memory:
            est = (
                estimate_lean_mapping(n_units, n_sp, S.shape[1], s.candidates, s.reverse_candidates)
                if choice is not False  # auto measures the lean engine too
                else estimate_dense_mapping(n_units, n_sp, S.shape[1])
            )
            check_fits(est, dev, mode)
        weights = Weights(
            s.lambda_g1, s.lambda_g2, float(lambda_d), s.lambda_r, s.lambda_count, s.lambda_f_reg
        )
        if choice is None and (problem.init is not None or s.epochs == 0):
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
                with threads_for(n_units * n_sp):
                    pairs = candidate_pairs(
                        torch.from_numpy(S),
                        torch.from_numpy(G),
                        s.candidates,
                        s.reverse_candidates,
                        search=s.search,
                        seed=problem.seed,
                    )
                if choice is None:  # auto: both engines measured on this problem
                    costs = probe_engine_costs(
                        S,
                        G,
                        weights,
                        pairs,
                        d=d,
                        learning_rate=s.learning_rate,
                        seed=s.seed,
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
                d_source=problem.d_source,
                learning_rate=s.learning_rate,
                seed=s.seed,
                device=dev,
                init=problem.init,
                target_count=s.target_count if s.target_count is not None else n_sp,
                constrained=mode == "constrained",
                pairs=pairs,
            )
            scores: list[float] = []
            t_train = time.perf_counter()
            for info in mapper.iterate(s.epochs, cancel=cancel):
                if callback is not None:
                    callback(info)
                scores.append(info.score)
                if (
                    s.tol
                    and len(scores) > s.patience
                    and scores[-1] - scores[-1 - s.patience] < s.tol
                ):
                    break
        stop_reason = "plateau" if mapper.epochs_done < s.epochs else "epochs"
        t_done = time.perf_counter()
        mapper.release_optimizer()
        return BuiltMap(
            name=self.name,
            probabilities=mapper.probabilities(),
            history=dict(mapper.history),
            epochs_done=mapper.epochs_done,
            stop_reason=stop_reason,
            engine_note=engine_note,
            n_pairs=int(pairs[0].shape[0]) if pairs is not None else n_units * n_sp,
            filter_probabilities=mapper.filter_probabilities(),
            ran={
                "density": d_name,
                "lambda_d": float(lambda_d),
                "device": str(dev),
                "engine": "lean" if lean else "exact",
                "candidates": s.candidates if lean else 0,
                "reverse_candidates": s.reverse_candidates if lean else 0,
                "search": resolve_search(s.search, n_units, n_sp) if lean else "exact",
            },
            seconds=time.perf_counter() - t0,
            timings={"setup_s": t_train - t0, "train_s": t_done - t_train},
        )
