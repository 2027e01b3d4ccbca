"""Neighbourhood ensemble: the ensemble map's weights (a peer of the Tangram map, core/maps).

Each spatial cell is matched to its most similar reference cells over the training genes in
several spaces, and the matches are averaged into one sparse, row-stochastic weight matrix W
(spatial cells x reference cells). Imputed genes are ``W S`` (weighted means of reference
cells, in the reference's units) and cluster probabilities ``W onehot(clusters)``.

Members (space, neighbours, weighting), all on the training genes only:

* cosine on the values as given, 10 neighbours, uniform;
* cosine after z-scoring each gene within each data set (removes per-gene platform effects such
  as detection efficiency), 50 and 100 neighbours, uniform;
* the same z-scored space with 100 neighbours weighted by ``exp(cos / 0.1)``;
* the first 20 principal components of both z-scored sets together, 50 neighbours, uniform.

Measured with the benchmark protocol (log-normalised, 10 folds over genes, seed 0; see
docs/benchmarks.md): median held-out Pearson 0.31 on the MERFISH hypothalamus pair (tangram-sc
0.20, kNN baseline 0.25), 0.20 on STARmap (0.11, 0.13) and 0.39 on osmFISH (0.29, 0.38); no single
member was best on all three.

Each space's neighbours are found exactly (every pair compared, in blocks) or, above about 10^9
pairs, approximately with an inverted-file index of the reference cells
(:mod:`napari_spatial_impute.core.engine.search`; ``search=``). Measured at 50,000 x 50,000 cells
x 270 genes: 99 % of the exact weight found, held-out Pearson unchanged, 3.5x less time
(docs/benchmarks.md, "Candidate search (issue 14)").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from napari_spatial_impute._errors import MappingCancelled
from napari_spatial_impute.core.engine.mapper import CancelFlag, is_cancelled
from napari_spatial_impute.core.engine.search import ClusterIndex, exact_top_k, resolve_search
from napari_spatial_impute.core.engine.search import unit_rows as _unit_rows


class Member(NamedTuple):
    """One neighbour search of the ensemble."""

    space: str  # "raw", "z" or "pca"
    k: int
    temperature: float | None = None


MEMBERS: tuple[Member, ...] = (
    Member("raw", 10),
    Member("z", 50),
    Member("z", 100),
    Member("z", 100, 0.1),
    Member("pca", 50),
)
PCA_COMPONENTS = 20


def _zscore(X: torch.Tensor) -> torch.Tensor:
    """Each column centred and scaled to unit standard deviation.

    A column with one value (every column of a one-row set) is all zeros: its float32 mean is not
    always that value exactly, and the rounding residue divided by its own tiny standard
    deviation gave z-scores of about ±1 (noise that looked like signal).
    """
    sd = X.std(dim=0, keepdim=True) if X.shape[0] > 1 else torch.ones_like(X[:1])
    sd = torch.where(torch.isfinite(sd) & (sd > 0), sd, torch.ones_like(sd))
    Z = (X - X.mean(dim=0, keepdim=True)) / sd
    Z[:, X.amax(dim=0) == X.amin(dim=0)] = 0.0
    return Z


def similarity_values(
    X: np.ndarray, raw_counts: bool, rows: np.ndarray | None = None
) -> np.ndarray:
    """Values used to compare cells: log1p of median-total-normalised counts for raw counts.

    ``rows``: only these rows (normalised to the median total of all rows, as when all are
    transformed and then indexed).
    """
    if not raw_counts:
        return X if rows is None else X[rows]
    scale = count_scale(X)
    if rows is not None:
        X, scale = X[rows], scale[rows]
    values: np.ndarray = np.log1p(X * scale)
    return values


def count_scale(X: np.ndarray) -> np.ndarray:
    """Each row's factor to the median total count of the rows with counts (0 for empty rows)."""
    tot = np.asarray(X.sum(1, keepdims=True))
    target = float(np.median(tot[tot > 0])) if np.any(tot > 0) else 1.0
    scale: np.ndarray = np.zeros_like(tot)
    np.divide(target, tot, out=scale, where=tot > 0)
    return scale


def effective_k(k: int, n: int) -> int:
    """Neighbours used with ``n`` reference units: ``k``, but at most a fifth of them (>= 1)."""
    return max(1, min(k, n - 1 if n > 1 else 1, max(3, n // 5)))


def neighbour_weights(
    S: np.ndarray,
    G: np.ndarray,
    members: tuple[Member, ...] = MEMBERS,
    chunk: int | None = None,
    cancel: CancelFlag = None,
    search: str = "auto",
    seed: int = 0,
    spatial_raw: bool = False,
) -> sp.csr_matrix:
    """The ensemble's weight matrix.

    Parameters
    ----------
    S
        Reference cells x training genes (similarity values).
    G
        Spatial cells x the same genes.
    members
        Neighbour searches to average.
    chunk
        Spatial cells per block (default: about 32 M similarities per block).
    cancel
        A ``threading.Event`` or a callable; when it is set the search stops with
        :class:`~napari_spatial_impute.MappingCancelled` before its next block.
    search
        How each spatial cell's neighbours are found: ``"exact"`` compares every pair;
        ``"approximate"`` searches an inverted-file index of the reference cells per space
        (:class:`~napari_spatial_impute.core.engine.search.ClusterIndex`); ``"auto"``
        (:func:`~napari_spatial_impute.core.engine.search.resolve_search`) is exact below about
        10^9 pairs, so small data give the same weights as the exact search, bit for bit.
    seed
        Seed of the approximate search's index.
    spatial_raw
        ``G`` holds raw counts: its cells are compared on their log-normalised values
        (:func:`similarity_values`), made a block of cells at a time.

    Returns
    -------
    CSR matrix spatial cells x reference cells, float32, rows summing to 1.

    Notes
    -----
    The z-scored and PCA spaces standardise each gene within each data set. When no gene varies
    within one of the sets (a set of one cell, or of identical cells) its z-scores are all zero and
    say nothing about which cells are alike; those members then compare the values as given (the
    ``"raw"`` space) instead.

    Memory: besides ``S``, ``G`` and the weights, one block of spatial cells at a time in each
    space (:class:`SpatialSpaces`), never a second copy of all spatial cells x genes.
    """
    n, s = S.shape[0], G.shape[0]
    if n == 0 or s == 0:
        raise ValueError(
            f"neighbour_weights needs cells on both sides, got {n} reference and {s} spatial."
        )
    St = torch.as_tensor(np.asarray(S, dtype=np.float32))
    spatial = SpatialSpaces(G, raw_counts=spatial_raw)
    Sz = None
    if any(m.space in ("z", "pca") for m in members):
        Sz = _zscore(St)
        if not (bool(Sz.any()) and spatial.varies):
            members = tuple(
                m._replace(space="raw") if m.space in ("z", "pca") else m for m in members
            )
    # spaces in the members' order: a set's order follows Python's string hash randomisation,
    # and the order of the blocks below sets the order of the float sums
    spaces = list(dict.fromkeys(m.space for m in members))
    ref_space: dict[str, torch.Tensor] = {}
    if "raw" in spaces:
        ref_space["raw"] = _unit_rows(St)
    if Sz is not None:
        if "z" in spaces:
            ref_space["z"] = _unit_rows(Sz)
        if "pca" in spaces:
            cov = (Sz.t() @ Sz + spatial.gram()) / float(n + s)
            _, vecs = torch.linalg.eigh(cov.double())
            V = vecs[:, -min(PCA_COMPONENTS, S.shape[1]) :].float()
            ref_space["pca"] = _unit_rows(Sz @ V)
            spatial.pca = V
    del St, Sz
    if resolve_search(search, n, s) == "approximate":
        return _approximate_weights(ref_space, spatial, members, spaces, n, s, seed, cancel)
    chunk = chunk or max(256, (1 << 25) // max(n, 1))
    out = _RowBlocks((s, n), _most_per_row(members, spaces, n))
    for a in range(0, s, chunk):
        if is_cancelled(cancel):
            raise MappingCancelled(f"mapping cancelled after {a} of {s} spatial cells")
        b = min(s, a + chunk)
        rows = spatial.rows(a, b, spaces)
        # the members' weights summed into one dense block (the size of the similarities): its
        # nonzeros, read row by row, are the block's CSR rows with sorted columns
        acc = torch.zeros((b - a, n), dtype=torch.float32)
        for space in spaces:
            mine = [m for m in members if m.space == space]
            kmax = max(effective_k(m.k, n) for m in mine)
            top_v, top_i = exact_top_k(ref_space[space], rows[space], kmax, chunk=b - a)
            for m in mine:
                k = effective_k(m.k, n)
                acc.scatter_add_(1, top_i[:, :k], _member_weights(top_v[:, :k], m, len(members)))
        r, c = acc.nonzero(as_tuple=True)
        out.add(torch.bincount(r, minlength=b - a).numpy(), c.numpy(), acc[r, c].numpy())
        del acc, rows
    return out.matrix()


#: Spatial cells per block when the spatial spaces are made (z-scores, PCA scores, unit rows):
#: no copy of all spatial cells x genes is made beyond the values given.
SPACE_ROWS = 1 << 16


class SpatialSpaces:
    """The spatial cells in each space of the ensemble, made a block of rows at a time.

    The statistics over all cells (each gene's mean and standard deviation for the z-scores,
    the z-scores' Gram matrix for the PCA, the median total for raw counts) are computed once;
    then :meth:`rows` gives a block's unit rows in each space. Each value of a block is computed
    as it was over all cells at once (elementwise from the same statistics), so the blocks give
    the same numbers whatever their size; the Gram matrix is summed over blocks of
    :data:`SPACE_ROWS` cells (one block, and the same sum as before, up to that many cells).
    """

    def __init__(self, G: np.ndarray, raw_counts: bool = False, block: int | None = None) -> None:
        self.G = np.asarray(G, dtype=np.float32)
        self.block = block or SPACE_ROWS
        self.scale = count_scale(self.G) if raw_counts else None
        self.pca: torch.Tensor | None = None
        s = self.G.shape[0]
        if self.scale is None:
            X = torch.as_tensor(self.G)
            self._stats(X)
        else:
            # the statistics of the log-normalised values, a block at a time (float64 sums)
            self._stats_blocks()
        self.varies = s > 1 and bool((self.hi != self.lo).any())

    def _stats(self, X: torch.Tensor) -> None:
        s = X.shape[0]
        sd = X.std(dim=0, keepdim=True) if s > 1 else torch.ones_like(X[:1])
        self.sd = torch.where(torch.isfinite(sd) & (sd > 0), sd, torch.ones_like(sd))
        self.mean = X.mean(dim=0, keepdim=True)
        self.hi, self.lo = X.amax(dim=0), X.amin(dim=0)

    def _stats_blocks(self) -> None:
        s = self.G.shape[0]
        if s <= self.block:
            self._stats(torch.as_tensor(self.values(0, s)))
            return
        g = self.G.shape[1]
        total = np.zeros(g, dtype=np.float64)
        hi = np.full(g, -np.inf, dtype=np.float32)
        lo = np.full(g, np.inf, dtype=np.float32)
        for a in range(0, s, self.block):
            V = self.values(a, min(s, a + self.block))
            total += V.sum(0, dtype=np.float64)
            np.maximum(hi, V.max(0), out=hi)
            np.minimum(lo, V.min(0), out=lo)
        mean = total / s
        sq = np.zeros(g, dtype=np.float64)
        for a in range(0, s, self.block):
            V = self.values(a, min(s, a + self.block))
            sq += ((V - mean) ** 2).sum(0)
        sd = torch.as_tensor(np.sqrt(sq / (s - 1)).astype(np.float32))[None, :]
        self.sd = torch.where(torch.isfinite(sd) & (sd > 0), sd, torch.ones_like(sd))
        self.mean = torch.as_tensor(mean.astype(np.float32))[None, :]
        self.hi, self.lo = torch.as_tensor(hi), torch.as_tensor(lo)

    def values(self, a: int, b: int) -> np.ndarray:
        """Rows ``a:b`` as cells are compared (:func:`similarity_values`)."""
        if self.scale is None:
            return self.G[a:b]
        out: np.ndarray = np.log1p(self.G[a:b] * self.scale[a:b])
        return out

    def z(self, a: int, b: int) -> torch.Tensor:
        """Rows ``a:b`` z-scored with the statistics of all cells (as :func:`_zscore`)."""
        X = torch.as_tensor(self.values(a, b))
        if self.G.shape[0] <= 1:
            return torch.zeros_like(X)
        Z = (X - self.mean) / self.sd
        Z[:, self.hi == self.lo] = 0.0
        return Z

    def gram(self) -> torch.Tensor:
        """``Zᵀ Z`` over all cells' z-scores (summed over blocks of :data:`SPACE_ROWS`)."""
        s = self.G.shape[0]
        total = None
        for a in range(0, s, self.block):
            Z = self.z(a, min(s, a + self.block))
            part = Z.t() @ Z
            total = part if total is None else total + part
        assert total is not None
        return total

    def rows(self, a: int, b: int, spaces: list[str]) -> dict[str, torch.Tensor]:
        """Unit rows ``a:b`` in each of ``spaces``."""
        out: dict[str, torch.Tensor] = {}
        if "raw" in spaces:
            out["raw"] = _unit_rows(torch.as_tensor(self.values(a, b)))
        if "z" in spaces or "pca" in spaces:
            Z = self.z(a, b)
            if "z" in spaces:
                out["z"] = _unit_rows(Z)
            if "pca" in spaces:
                assert self.pca is not None
                out["pca"] = _unit_rows(Z @ self.pca)
        return out


def _member_weights(v: torch.Tensor, m: Member, n_members: int) -> torch.Tensor:
    """A member's weights of its ``k`` neighbours (similarities ``v``, best first)."""
    if m.temperature is None:
        w = torch.full_like(v, 1.0 / v.shape[1])
    else:
        w = torch.softmax(v / m.temperature, dim=1)
    out: torch.Tensor = w / n_members
    return out


def _approximate_weights(
    ref_space: dict[str, torch.Tensor],
    spatial: SpatialSpaces,
    members: tuple[Member, ...],
    spaces: list[str],
    n: int,
    s: int,
    seed: int,
    cancel: CancelFlag,
) -> sp.csr_matrix:
    """:func:`neighbour_weights` with each space's neighbours from an inverted-file index.

    The members' weights are summed per (spatial, reference) pair in the members' order, as in
    the exact search; memory is linear in the cells (no block of all similarities).
    """
    done = [0]

    def check() -> None:
        if is_cancelled(cancel):
            raise MappingCancelled(f"mapping cancelled after {done[0]} of {s} spatial cells")

    indexes: dict[str, ClusterIndex] = {}
    for space in spaces:
        check()
        # the index keeps its own (reordered) copy of the reference rows
        indexes[space] = ClusterIndex(ref_space.pop(space), seed=seed)
    chunk = 1 << 14
    out = _RowBlocks((s, n), _most_per_row(members, spaces, n))
    for a in range(0, s, chunk):
        done[0] = a
        b = min(s, a + chunk)
        rows = spatial.rows(a, b, spaces)
        local = torch.arange(b - a, dtype=torch.int64)[:, None] * n
        keys, weights = [], []
        for space in spaces:
            mine = [m for m in members if m.space == space]
            kmax = max(effective_k(m.k, n) for m in mine)
            top_v, top_i = indexes[space].search(rows.pop(space), kmax, cancel=check)
            for m in mine:
                k = effective_k(m.k, n)
                keys.append((local + top_i[:, :k]).reshape(-1))
                weights.append(_member_weights(top_v[:, :k], m, len(members)).reshape(-1))
        key, inverse = torch.unique(torch.cat(keys), sorted=True, return_inverse=True)
        acc = torch.zeros(key.shape[0], dtype=torch.float32).index_add_(
            0, inverse, torch.cat(weights)
        )
        out.add(torch.bincount(key // n, minlength=b - a).numpy(), (key % n).numpy(), acc.numpy())
    check()
    return out.matrix()


def _most_per_row(members: tuple[Member, ...], spaces: list[str], n: int) -> int:
    """Most reference cells a spatial cell's row can hold: each space's largest ``k``, summed."""
    return sum(max(effective_k(m.k, n) for m in members if m.space == sp_) for sp_ in spaces)


class _RowBlocks:
    """The weight matrix's CSR arrays, filled a block of rows at a time.

    The columns and values go into arrays made once for the most nonzeros the rows can hold
    (:func:`_most_per_row`), shrunk in place at the end: no list of blocks joined into a second
    copy (at 10^6 spatial cells the map is about 1 GiB).
    """

    def __init__(self, shape: tuple[int, int], most_per_row: int) -> None:
        self.shape = shape
        cap = shape[0] * max(1, min(most_per_row, shape[1]))
        self.indices = np.empty(cap, dtype=np.int32)
        self.data = np.empty(cap, dtype=np.float32)
        self.counts: list[np.ndarray] = []
        self.nnz = 0

    def add(self, counts: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        """The next block of rows: nonzeros per row, their sorted columns and values."""
        k = len(cols)
        self.indices[self.nnz : self.nnz + k] = cols
        self.data[self.nnz : self.nnz + k] = vals
        self.counts.append(counts)
        self.nnz += k

    def matrix(self) -> sp.csr_matrix:
        indptr = np.zeros(self.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.concatenate(self.counts), out=indptr[1:])
        # shrunk in place (realloc; no second copy of the arrays)
        self.indices.resize(self.nnz, refcheck=False)
        self.data.resize(self.nnz, refcheck=False)
        W = sp.csr_matrix(
            (self.data, self.indices, indptr), shape=self.shape, dtype=np.float32, copy=False
        )
        W.has_sorted_indices = True
        return W
