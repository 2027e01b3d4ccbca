"""The mapper drives one interface: the exact, lean and constrained engines behind TangramMapper."""

from __future__ import annotations

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
