"""The mapper drives one interface: the exact, lean and constrained engines behind TangramMapper."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from napari_spatial_impute.core.engine.candidates import candidate_pairs
from napari_spatial_impute.core.engine.engines import (
    CONSTRAINED_TERMS,
    ConstrainedObjective,
    ExactObjective,
    LeanObjective,
    MappingObjective,
)
from napari_spatial_impute.core.engine.mapper import TangramMapper
from napari_spatial_impute.core.engine.objective import TERMS, Weights


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((12, 5), dtype=np.float32), rng.random((9, 5), dtype=np.float32)


def _mapper(kind: str) -> TangramMapper:
    S, G = _data()
    w = Weights(lambda_d=1.0, lambda_r=0.1)
    d = np.full(G.shape[0], 1.0 / G.shape[0], dtype=np.float32)
    if kind == "lean":
        pairs = candidate_pairs(torch.from_numpy(S), torch.from_numpy(G), 3, 1)
        return TangramMapper(S, G, w, d=d, pairs=pairs, refresh_every=2, refresh_candidates=2)
    return TangramMapper(S, G, w, d=d, constrained=kind == "constrained", target_count=5)


@pytest.mark.parametrize(
    ("kind", "cls", "terms"),
    [
        ("exact", ExactObjective, TERMS),
        ("lean", LeanObjective, TERMS),
        ("constrained", ConstrainedObjective, CONSTRAINED_TERMS),
    ],
)
def test_mapper_drives_one_objective(kind, cls, terms):
    mapper = _mapper(kind)
    objective: MappingObjective = mapper.objective
    assert isinstance(objective, cls)
    assert tuple(mapper.history) == terms == objective.terms
    assert mapper.M is objective.M
    infos = list(mapper.iterate(4))
    assert [i.epoch for i in infos] == [1, 2, 3, 4]
    assert mapper.epochs_done == 4
    assert all(len(v) == 4 and np.all(np.isfinite(v)) for v in mapper.history.values())
    P = mapper.probabilities()
    dense = P.toarray() if sp.issparse(P) else P
    assert dense.shape == (12, 9)
    np.testing.assert_allclose(dense.sum(1), 1.0, rtol=1e-5)
    assert sp.issparse(P) == (kind == "lean")
    assert (mapper.pairs is not None) == (kind == "lean")
    assert (mapper.filter_probabilities() is not None) == (kind == "constrained")
    assert mapper.threads() >= 1
    mapper.release_optimizer()
    with pytest.raises(RuntimeError, match="released"):
        mapper.step()


def test_lean_refresh_changes_the_pairs_the_mapper_reports():
    mapper = _mapper("lean")
    assert mapper.pairs is not None
    before = mapper.pairs[0].shape[0]
    list(mapper.iterate(2))  # refresh_every=2: one refresh after the second epoch
    assert mapper.pairs is not None
    assert mapper.pairs[0].shape[0] == mapper.M.shape[0]
    assert mapper.pairs[0].shape[0] != before


# ------------------------------------------------------------- auto's measured engine choice
def _problem(n: int = 120, s: int = 90, g: int = 15) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.random((n, g), dtype=np.float32), rng.random((s, g), dtype=np.float32)


def test_probe_measures_both_engines_on_the_whole_small_problem():
    from napari_spatial_impute.core.engine.mapper import EngineCosts, probe_engine_costs

    S, G = _problem()
    pairs = candidate_pairs(torch.from_numpy(S), torch.from_numpy(G), 10, 2)
    costs = probe_engine_costs(S, G, Weights(lambda_d=1.0), pairs, epochs=2)
    assert isinstance(costs, EngineCosts)
    assert costs.exact_rows == (120,) and costs.n_units == 120  # small: probed whole
    assert costs.lean_epoch_s > 0 and costs.exact_epoch_s > 0 and costs.lean_refresh_s > 0
    assert costs.lean_s == costs.lean_epoch_s + costs.lean_refresh_s
    assert costs.lean_wins == (costs.lean_s < costs.exact_epoch_s)
    note = costs.describe()
    assert note.startswith(f"auto chose the {'lean' if costs.lean_wins else 'exact'} engine")
    assert "ms/epoch" in note and "all reference cells" in note


def test_probe_of_a_large_problem_uses_two_row_subsets():
    from napari_spatial_impute.core.engine.mapper import probe_engine_costs

    S, G = _problem(n=200, s=60)
    pairs = candidate_pairs(torch.from_numpy(S), torch.from_numpy(G), 10, 2)
    costs = probe_engine_costs(S, G, Weights(), pairs, epochs=1, probe_entries=600)
    # 600 entries over 60 spatial cells: 10 reference rows, then 20; extrapolated to 200
    assert costs.exact_rows == (10, 20) and costs.n_units == 200
    assert "extrapolated from 10 and 20 of 200 reference cells" in costs.describe()
    assert np.isfinite(costs.exact_epoch_s) and costs.exact_epoch_s > 0


def test_describe_names_the_cheaper_engine_and_the_ratio():
    from napari_spatial_impute.core.engine.mapper import EngineCosts

    lean = EngineCosts(0.010, 0.002, 0.084, (500, 1000), 4000)
    assert lean.lean_wins and lean.describe().startswith(
        "auto chose the lean engine, 7.0x cheaper per epoch"
    )
    assert "lean 12.0 ms/epoch (10.0 ms + 2.0 ms pair refresh), exact 84.0 ms/epoch" in (
        lean.describe()
    )
    exact = EngineCosts(0.030, 0.010, 0.020, (300,), 300)
    assert not exact.lean_wins and exact.describe().startswith(
        "auto chose the exact engine, 2.0x cheaper per epoch"
    )


def test_threads_for_small_problems_is_one_thread_then_restored(monkeypatch):
    from napari_spatial_impute.core.engine import engines
    from napari_spatial_impute.core.engine.engines import SMALL_PROBLEM, threads_for

    monkeypatch.setattr(engines, "cores_busy_elsewhere", lambda: 0.0)  # an idle machine
    before = torch.get_num_threads()
    with threads_for(1000) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with threads_for(SMALL_PROBLEM) as n:
        assert n == before and torch.get_num_threads() == before
    with pytest.raises(RuntimeError), threads_for(10):
        raise RuntimeError("restored on errors too")
    assert torch.get_num_threads() == before


def test_threads_for_large_problems_leave_the_cores_others_use(monkeypatch):
    from napari_spatial_impute.core.engine import engines
    from napari_spatial_impute.core.engine.engines import SMALL_PROBLEM, threads_for

    before = torch.get_num_threads()
    monkeypatch.setattr(engines.os, "cpu_count", lambda: 4)
    try:
        torch.set_num_threads(4)
        for busy, want in ((0.0, 4), (0.4, 4), (1.0, 3), (2.6, 1), (7.5, 1), (None, 4)):
            monkeypatch.setattr(engines, "cores_busy_elsewhere", lambda busy=busy: busy)
            with threads_for(SMALL_PROBLEM) as n:
                assert n == want == torch.get_num_threads(), busy
            assert torch.get_num_threads() == 4
        with threads_for(SMALL_PROBLEM, num_threads=3) as n:  # asked for: no sampling
            assert n == 3
    finally:
        torch.set_num_threads(before)


def test_cores_busy_elsewhere_is_a_share_of_the_machine():
    from napari_spatial_impute.core.engine.engines import cores_busy_elsewhere

    busy = cores_busy_elsewhere(0.05)
    if busy is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 0.5
