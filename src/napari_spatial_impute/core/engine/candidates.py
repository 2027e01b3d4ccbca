"""Candidate pairs for the lean engine: which reference cells each spatial cell may map to.

Each spatial cell keeps its ``k`` most similar reference cells, and each reference cell keeps its
``r`` most similar spatial cells (so that every reference cell is mapped somewhere, as in the
dense objective where each row of M sums to 1). Similarity is the cosine of profiles whose genes were
scaled to unit norm (see :func:`_normalised`). During training the set is refreshed from the
gradient (see :meth:`~napari_spatial_impute.core.engine.lean.CandidateObjective.propose`). The search runs in chunks, so memory stays
linear in the number of cells. Above about 10^9 pairs (``search="auto"``) both directions are
searched approximately, each with an inverted-file index
(:mod:`napari_spatial_impute.core.engine.search`), so the time no longer grows with the product
of the two cell counts.
"""

from __future__ import annotations

import torch

from napari_spatial_impute.core.engine.search import ClusterIndex, resolve_search


def _normalised(X: torch.Tensor, gene_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Each gene scaled to unit norm, then each cell to unit norm.

    The gene-wise cosine of the objective does not change when a gene is scaled in either data
    set, so genes are put on one footing before cells are compared (measured on the bundled
    MERFISH pair: training score 0.86 with 50 candidates, against 0.68 with log-normalised
    profiles and 0.63 with raw ones).
    """
    norm = X.norm(dim=0, keepdim=True) if gene_norm is None else gene_norm
    Y = X / norm.clamp_min(1e-12)
    unit: torch.Tensor = Y / Y.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit


def candidate_pairs(
    S: torch.Tensor,
    G: torch.Tensor,
    k: int = 50,
    r: int = 5,
    chunk: int | None = None,
    search: str = "auto",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate (reference, spatial) pairs, sorted by spatial cell then reference cell.

    Parameters
    ----------
    S
        Reference units x training genes.
    G
        Spatial cells x training genes.
    k
        Reference candidates per spatial cell.
    r
        Spatial candidates per reference unit.
    chunk
        Spatial cells per block of the exact search (default: about 32 M similarities per block).
    search
        ``"exact"`` compares every pair; ``"approximate"`` finds each spatial cell's ``k``
        candidates in an inverted-file index of the reference cells and each reference cell's
        ``r`` in one of the spatial cells
        (:class:`~napari_spatial_impute.core.engine.search.ClusterIndex`); ``"auto"``
        (:func:`~napari_spatial_impute.core.engine.search.resolve_search`) is exact below about
        10^9 pairs, where the pairs are the same as before the approximate search existed.
    seed
        Seed of the approximate search's indexes.

    Returns
    -------
    ``(rows, cols)``: int64 tensors of reference and spatial indices, unique pairs.
    """
    n, s = S.shape[0], G.shape[0]
    k = max(1, min(k, n))
    r = max(0, min(r, s))
    Sn = _normalised(S)
    g_norm = G.norm(dim=0, keepdim=True)
    if resolve_search(search, n, s) == "approximate":
        Gn = _normalised(G, g_norm)
        best = ClusterIndex(Sn, seed=seed).search(Gn, k)[1]
        rows = [best.reshape(-1)]
        cols = [torch.arange(s).repeat_interleave(k)]
        if r:
            rows.append(torch.arange(n).repeat_interleave(r))
            cols.append(ClusterIndex(Gn, seed=seed).search(Sn, r)[1].reshape(-1))
        return _sorted_unique(rows, cols, n)
    chunk = chunk or max(256, (1 << 25) // max(n, 1))
    spot_best = torch.empty((s, k), dtype=torch.int64)
    ref_val = torch.full((max(r, 1), n), -2.0)
    ref_idx = torch.zeros((max(r, 1), n), dtype=torch.int64)
    for a in range(0, s, chunk):
        b = min(s, a + chunk)
        sim = _normalised(G[a:b], g_norm) @ Sn.t()  # (c, n)
        spot_best[a:b] = torch.topk(sim, k, dim=1, sorted=False).indices
        if r:
            rr = min(r, b - a)
            v, i = torch.topk(sim, rr, dim=0, sorted=False)
            both_v = torch.cat([ref_val, v], 0)
            both_i = torch.cat([ref_idx, i + a], 0)
            keep = torch.topk(both_v, ref_val.shape[0], dim=0, sorted=False).indices
            ref_val = torch.gather(both_v, 0, keep)
            ref_idx = torch.gather(both_i, 0, keep)
    rows = [spot_best.reshape(-1)]
    cols = [torch.arange(s).repeat_interleave(k)]
    if r:
        valid = ref_val > -2.0
        rows.append(torch.arange(n).expand(ref_idx.shape[0], n)[valid])
        cols.append(ref_idx[valid])
    return _sorted_unique(rows, cols, n)


def _sorted_unique(
    rows: list[torch.Tensor], cols: list[torch.Tensor], n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unique pairs of the concatenated lists, sorted by spatial then reference cell."""
    key = torch.cat(cols) * n + torch.cat(rows)
    key = torch.unique(key)  # sorted: by spatial cell, then reference cell
    return key % n, key // n


def merge_pairs(
    rows: torch.Tensor, cols: torch.Tensor, new_rows: torch.Tensor, new_cols: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Union of two pair sets, sorted by spatial then reference index.

    Returns
    -------
    ``(rows, cols, old_pos)``: the merged pairs and, for each old pair, its position in them.
    """
    old_key = cols * n + rows
    key = torch.unique(torch.cat([old_key, new_cols * n + new_rows]))
    old_pos = torch.searchsorted(key, old_key)
    return key % n, key // n, old_pos
