"""Top-k cosine search between two sets of cells: exact, or approximate with an inverted-file index.

Both the neighbourhood ensemble (:func:`~napari_spatial_impute.core.neighbours.neighbour_weights`)
and the lean engine's candidates
(:func:`~napari_spatial_impute.core.engine.candidates.candidate_pairs`) ask the same question:
for each query cell, which ``k`` database cells have the largest cosine similarity? The exact
answer compares every pair (``n_queries x n_database x genes`` multiply-adds); at atlas scale
(10^5-10^6 spatial cells against 10^5-10^6 reference cells) that product dominates the run.

The approximate search (:class:`ClusterIndex`) is an inverted-file (IVF) index, built in torch:

1. spherical k-means (cosine) of the database rows into about ``sqrt(n)`` lists, from a seeded
   sample of rows and a seeded start (:func:`n_lists`, :data:`KMEANS_ITERATIONS`);
2. each query is compared with the list centres and probes the lists of the best few centres,
   enough that the probed lists hold about :data:`CANDIDATE_FACTOR` ``x k`` cells (at least
   :data:`MIN_PROBES` lists);
3. inside the probed lists the similarities are exact: each list is one matrix product with the
   queries that probe it, and each query keeps its best ``k`` over its lists.

A query whose probed lists hold fewer than ``k`` cells is searched exactly. The result is
deterministic for a seed on one machine. :func:`resolve_search` decides what ``"auto"`` means:
the exact search below :data:`AUTO_APPROXIMATE_PAIRS` query x database pairs (so small data
give exactly what they gave before the approximate search existed), the approximate one above.
Recall and time against the exact search are measured by ``benchmarks/candidate_search.py``
(docs/benchmarks.md, "Candidate search").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch

from napari_spatial_impute.core.settings import SEARCHES

#: ``search="auto"`` is approximate above this many query x database pairs.
AUTO_APPROXIMATE_PAIRS = 1_000_000_000
#: ``search="auto"`` is exact with fewer database cells than this (too few for lists).
AUTO_MIN_DATABASE = 20_000
#: Spherical k-means iterations of the index.
KMEANS_ITERATIONS = 10
#: Rows sampled per list to train the k-means.
TRAIN_PER_LIST = 64
#: Probed lists hold about this many times ``k`` cells.
CANDIDATE_FACTOR = 32
#: Lists probed at least.
MIN_PROBES = 16
#: Similarities per block (about 128 MB of float32).
BLOCK = 1 << 25


def unit_rows(X: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit norm (a zero row stays zero)."""
    unit: torch.Tensor = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit


def resolve_search(search: str, n_database: int, n_queries: int) -> Literal["exact", "approximate"]:
    """``"exact"`` or ``"approximate"``: what ``search`` means for these sizes.

    ``"auto"`` is approximate when the database has at least :data:`AUTO_MIN_DATABASE` cells
    and there are more than :data:`AUTO_APPROXIMATE_PAIRS` query x database pairs.
    """
    if search not in SEARCHES:
        raise ValueError(f"search {search!r} is not known; use one of {', '.join(SEARCHES)}.")
    if search == "auto":
        big = n_database >= AUTO_MIN_DATABASE and n_database * n_queries > AUTO_APPROXIMATE_PAIRS
        return "approximate" if big else "exact"
    return "approximate" if search == "approximate" else "exact"


def n_lists(n: int) -> int:
    """Lists of the index over ``n`` database cells: about ``sqrt(n)``, 1 to ``n``."""
    return max(1, min(n, round(math.sqrt(n))))


def exact_top_k(
    database: torch.Tensor, queries: torch.Tensor, k: int, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` most similar database rows (dot products of the rows as given).

    Returns ``(values, indices)``, each ``queries x k``, best first.
    """
    n, s = database.shape[0], queries.shape[0]
    k = min(k, n)
    chunk = chunk or max(256, BLOCK // max(n, 1))
    values = torch.empty((s, k), dtype=torch.float32)
    indices = torch.empty((s, k), dtype=torch.int64)
    for a in range(0, s, chunk):
        b = min(s, a + chunk)
        v, i = torch.topk(queries[a:b] @ database.t(), k, dim=1)
        values[a:b], indices[a:b] = v, i
    return values, indices


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch's intra-op threads set to one for the block, then restored."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _argmax_rows(X: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The best centre of each row, in blocks."""
    out = torch.empty(X.shape[0], dtype=torch.int64)
    step = max(256, BLOCK // max(centres.shape[0], 1))
    for a in range(0, X.shape[0], step):
        out[a : a + step] = (X[a : a + step] @ centres.t()).argmax(dim=1)
    return out


class ClusterIndex:
    """An inverted-file index of unit rows for approximate top-k cosine search.

    Parameters
    ----------
    database
        Database rows, scaled to unit norm by the caller (the similarity is their dot product).
    seed
        Seed of the k-means sample and start; the same seed gives the same index.
    lists
        Number of lists (default :func:`n_lists`).
    """

    def __init__(self, database: torch.Tensor, seed: int = 0, lists: int | None = None) -> None:
        X = database.to(torch.float32).contiguous()
        n = X.shape[0]
        if n == 0:
            raise ValueError("an index needs at least one database row")
        m = max(1, min(n, lists or n_lists(n)))
        rng = np.random.default_rng(seed)
        n_train = min(n, m * TRAIN_PER_LIST)
        train = X if n_train == n else X[torch.from_numpy(np.sort(rng.choice(n, n_train, False)))]
        centres = train[torch.from_numpy(rng.choice(train.shape[0], m, replace=False))].clone()
        for _ in range(KMEANS_ITERATIONS):
            assign = _argmax_rows(train, centres)
            sums = torch.zeros_like(centres).index_add_(0, assign, train)
            filled = torch.bincount(assign, minlength=m) > 0
            # an empty list keeps its centre (duplicate rows can leave one empty)
            centres = torch.where(filled[:, None], unit_rows(sums), centres)
        assign = _argmax_rows(X, centres)
        order = torch.argsort(assign, stable=True)
        counts = torch.bincount(assign, minlength=m)
        self.centres = centres
        self.ids = order
        self.rows = X[order]
        self.offsets = torch.zeros(m + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=self.offsets[1:])
        self.n = n

    @property
    def lists(self) -> int:
        """Number of lists."""
        return int(self.centres.shape[0])

    def probes(self, k: int) -> int:
        """Lists each query probes for ``k`` neighbours."""
        per_list = self.n / self.lists
        return max(1, min(self.lists, max(MIN_PROBES, math.ceil(CANDIDATE_FACTOR * k / per_list))))

    def search(
        self,
        queries: torch.Tensor,
        k: int,
        probes: int | None = None,
        cancel: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's ``k`` most similar database rows (approximately), best first.

        ``queries`` are unit rows. Returns ``(values, indices)``, each ``queries x k``, with
        ``k`` at most the number of database rows. ``cancel``, when given, is called before
        each block and stops the search by raising whatever it raises.
        """
        s, k = queries.shape[0], min(k, self.n)
        p = probes or self.probes(k)
        Q = queries.to(torch.float32)
        values = torch.empty((s, k), dtype=torch.float32)
        indices = torch.empty((s, k), dtype=torch.int64)
        sizes = self.offsets.diff()
        # candidates kept per probed list (p of them hold k at least, padded with -inf)
        width = max(min(k, int(sizes.max())), -(-k // p))
        # about 16 M candidates (64 MB of values, 128 MB of positions) per block of queries
        chunk = max(256, min(BLOCK // (2 * p * width), BLOCK // self.lists))
        offsets = self.offsets.tolist()
        # the blocks' many small products on one thread: with two, each waited for the second
        # thread whenever another process held a core (4-7x slower, measured here)
        with _one_thread():
            for a in range(0, s, chunk):
                if cancel is not None:
                    cancel()
                b = min(s, a + chunk)
                values[a:b], indices[a:b] = self._search_block(Q[a:b], k, p, width, offsets)
        return values, indices

    def _search_block(
        self, Qc: torch.Tensor, k: int, p: int, width: int, offsets: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`search` for one block of queries, each probing ``p`` lists."""
        c = Qc.shape[0]
        probe = torch.topk(Qc @ self.centres.t(), p, dim=1).indices.reshape(-1)
        # the (query, list) pairs grouped by list: each list is one matrix product; each pair's
        # best ``width`` candidates go to the query's slot of that list
        order = torch.argsort(probe, stable=True)
        by_list = torch.bincount(probe, minlength=self.lists).tolist()
        cand_v = torch.full((c * p, width), -torch.inf)
        cand_i = torch.full((c * p, width), -1, dtype=torch.int64)
        start = 0
        for lst, count in enumerate(by_list):
            if not count:
                continue
            slots = order[start : start + count]
            start += count
            lo, hi = offsets[lst], offsets[lst + 1]
            if hi == lo:
                continue
            sim = Qc.index_select(0, slots // p) @ self.rows[lo:hi].t()
            if hi - lo <= width:
                cand_v[slots, : hi - lo] = sim
                cand_i[slots, : hi - lo] = torch.arange(lo, hi)
            else:
                v, i = torch.topk(sim, width, dim=1, sorted=False)
                cand_v.index_copy_(0, slots, v)
                cand_i.index_copy_(0, slots, i.add_(lo))
        best_v, pos = torch.topk(cand_v.view(c, p * width), k, dim=1)
        # positions in the lists' order, then database rows
        best_i = self.ids[torch.gather(cand_i.view(c, p * width), 1, pos).clamp_min(0)]
        best_i[torch.isinf(best_v)] = -1
        short = (best_i < 0).any(dim=1).nonzero().ravel()
        if short.numel():  # fewer than k cells in the probed lists: search those exactly
            v, i = exact_top_k(self.rows, Qc[short], k)
            best_v[short], best_i[short] = v, self.ids[i]
        return best_v, best_i


def top_k(
    database: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    search: str = "auto",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` most similar database rows by cosine, best first.

    ``database`` and ``queries`` are scaled to unit rows here. ``search``: ``"exact"``,
    ``"approximate"`` (:class:`ClusterIndex`) or ``"auto"`` (:func:`resolve_search`).
    Returns ``(values, indices)``, each ``queries x min(k, database rows)``.
    """
    D, Q = unit_rows(database.to(torch.float32)), unit_rows(queries.to(torch.float32))
    if resolve_search(search, D.shape[0], Q.shape[0]) == "exact":
        return exact_top_k(D, Q, k)
    return ClusterIndex(D, seed=seed).search(Q, k)
