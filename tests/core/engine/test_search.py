"""The top-k search: exact, and approximate with the inverted-file index (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_spatial_impute.core.engine import search as S
from napari_spatial_impute.core.engine.search import (
    ClusterIndex,
    exact_top_k,
    resolve_search,
    top_k,
    unit_rows,
)


def _clustered(n: int, s: int, d: int = 24, centres: int = 40, seed: int = 0):
    """Database and query rows (unit) drawn around shared centres: cells of many types."""
    rng = np.random.default_rng(seed)
    C = rng.gamma(0.6, 1.0, (centres, d)) * (rng.random((centres, d)) < 0.5)
    C += 0.05

    def draw(m: int) -> torch.Tensor:
        X = C[rng.integers(0, centres, m)] * rng.lognormal(0.0, 0.3, (m, d))
        return unit_rows(torch.from_numpy(X.astype(np.float32)))

    return draw(n), draw(s)


def _recall(approx: torch.Tensor, exact: torch.Tensor) -> float:
    hits = [len(np.intersect1d(a, b)) for a, b in zip(approx.numpy(), exact.numpy(), strict=True)]
    return float(np.mean(hits)) / exact.shape[1]


def test_resolve_search_is_exact_for_small_problems():
    assert resolve_search("auto", 1308, 750) == "exact"
    assert resolve_search("auto", S.AUTO_MIN_DATABASE - 1, 10**9) == "exact"  # too few lists
    assert resolve_search("auto", 50_000, 50_000) == "approximate"
    assert resolve_search("auto", 20_000, 40_000) == "exact"  # 8 x 10^8 pairs
    assert resolve_search("approximate", 3, 2) == "approximate"
    assert resolve_search("exact", 10**6, 10**6) == "exact"
    with pytest.raises(ValueError, match="search 'fast' is not known"):
        resolve_search("fast", 10, 10)


@pytest.mark.parametrize("k", [10, 50])
def test_recall_is_high_on_clustered_cells(k):
    D, Q = _clustered(6000, 1500)
    index = ClusterIndex(D, seed=0)
    assert index.lists == S.n_lists(6000) == 77
    v, i = index.search(Q, k)
    ev, ei = exact_top_k(D, Q, k)
    assert _recall(i, ei) > 0.97
    # the values are the true similarities of the returned rows, best first, rows unique
    torch.testing.assert_close(v, (Q[:, None, :] * D[i]).sum(-1), rtol=1e-5, atol=1e-6)
    assert torch.all(v[:, 1:] <= v[:, :-1])
    assert all(len(set(row)) == k for row in i.tolist())
    # what was missed was nearly as similar as what it replaced
    assert float(v[:, -1].mean()) > float(ev[:, -1].mean()) - 0.01


def test_search_probes_fewer_lists_than_it_has():
    """The point of the index: at 6,000 rows it compares each query with a part of them."""
    D, _ = _clustered(6000, 1)
    index = ClusterIndex(D, seed=0)
    assert index.probes(10) == S.MIN_PROBES < index.lists
    assert index.probes(50) < index.lists


def test_same_seed_same_index_and_result():
    D, Q = _clustered(3000, 500, seed=1)
    a, b = ClusterIndex(D, seed=7), ClusterIndex(D, seed=7)
    assert torch.equal(a.centres, b.centres) and torch.equal(a.ids, b.ids)
    ra, rb = a.search(Q, 20), b.search(Q, 20)
    assert torch.equal(ra[0], rb[0]) and torch.equal(ra[1], rb[1])
    c = ClusterIndex(D, seed=8)
    assert not torch.equal(a.centres, c.centres)
    assert _recall(c.search(Q, 20)[1], exact_top_k(D, Q, 20)[1]) > 0.95


def test_every_list_probed_is_the_exact_search():
    D, Q = _clustered(400, 300, seed=2)
    index = ClusterIndex(D, seed=0)
    v, i = index.search(Q, 15, probes=index.lists)
    ev, ei = exact_top_k(D, Q, 15)
    torch.testing.assert_close(v, ev, rtol=1e-5, atol=1e-6)
    assert _recall(i, ei) > 0.999  # only ties may swap


def test_queries_whose_lists_are_too_small_are_searched_exactly():
    """One probed list of about 8 rows cannot hold 30 neighbours: those queries go exact."""
    D, Q = _clustered(500, 40, seed=3)
    index = ClusterIndex(D, seed=0, lists=60)
    v, i = index.search(Q, 30, probes=1)
    ev, ei = exact_top_k(D, Q, 30)
    assert torch.all(i >= 0)
    torch.testing.assert_close(v, ev, rtol=1e-5, atol=1e-6)


def test_fewer_database_rows_than_k_and_one_row():
    D, Q = _clustered(3, 5, seed=4)
    v, i = ClusterIndex(D).search(Q, 10)
    assert v.shape == (5, 3) and sorted(i[0].tolist()) == [0, 1, 2]
    one = ClusterIndex(D[:1])
    assert one.lists == 1
    v, i = one.search(Q, 4)
    assert i.shape == (5, 1) and torch.all(i == 0)
    v, i = ClusterIndex(D).search(Q[:1], 2)
    assert i.shape == (1, 2)
    v, i = ClusterIndex(D).search(Q[:0], 2)
    assert v.shape == (0, 2) and i.shape == (0, 2)
    with pytest.raises(ValueError, match="at least one database row"):
        ClusterIndex(D[:0])


def test_duplicate_and_zero_rows():
    """Copies of one row share a list (their twin centres leave lists empty); zero rows have
    similarity 0 with everything and are still returned when they are among the best."""
    D, Q = _clustered(200, 50, seed=5)
    dup = torch.cat([D[:1].expand(300, -1), D[1:51], torch.zeros(5, D.shape[1])])
    index = ClusterIndex(dup, seed=0)
    assert int(index.offsets[-1]) == dup.shape[0]
    v, i = index.search(dup[:1], 300)
    assert set(i[0].tolist()) == set(range(300))  # every copy of the row, similarity 1
    torch.testing.assert_close(v, torch.ones_like(v))
    v, i = index.search(Q, 20)
    ev, _ = exact_top_k(dup, Q, 20)
    torch.testing.assert_close(v[:, 0], ev[:, 0])
    same = ClusterIndex(D[:1].expand(40, -1).contiguous())
    assert torch.all(same.search(Q, 5)[1] < 40)


def test_top_k_scales_rows_and_chooses_the_search():
    D, Q = _clustered(500, 60, seed=6)
    raw_D, raw_Q = D * 3.0, Q * torch.rand(60, 1)
    v, i = top_k(raw_D, raw_Q, 5, search="exact")
    ev, ei = exact_top_k(D, Q, 5)
    assert torch.equal(i, ei)
    v, i = top_k(raw_D, raw_Q, 5, search="approximate", seed=1)
    assert _recall(i, ei) > 0.95


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    n=st.integers(1, 120),
    s=st.integers(1, 30),
    d=st.integers(1, 8),
    k=st.integers(1, 25),
    probes=st.integers(1, 12),
    zeros=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_input_gives_valid_neighbours(n, s, d, k, probes, zeros, seed):
    """For any data and any number of probed lists: k unique rows per query (at most n), each
    with its true similarity, best first, none better than the exact k-th best left out."""
    rng = np.random.default_rng(seed)
    X = rng.gamma(0.5, 1.0, (n + s, d)) * (rng.random((n + s, d)) > zeros)
    X = unit_rows(torch.from_numpy(np.round(X, 1).astype(np.float32)))  # rounding: ties, copies
    D, Q = X[:n], X[n:]
    index = ClusterIndex(D, seed=seed % 1000)
    v, i = index.search(Q, k, probes=min(probes, index.lists))
    kk = min(k, n)
    assert v.shape == i.shape == (s, kk)
    assert torch.all((i >= 0) & (i < n))
    assert all(len(set(row)) == kk for row in i.tolist())
    torch.testing.assert_close(v, (Q[:, None, :] * D[i]).sum(-1), rtol=1e-5, atol=1e-6)
    assert torch.all(v[:, 1:] <= v[:, :-1] + 1e-6)
    ev, _ = exact_top_k(D, Q, kk)
    assert torch.all(v <= ev + 1e-5)  # never better than exact, rank by rank
    full = index.search(Q, k, probes=index.lists)[0]
    torch.testing.assert_close(full, ev, rtol=1e-5, atol=1e-6)
