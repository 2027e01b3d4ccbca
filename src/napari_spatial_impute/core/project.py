"""Projection of a learned mapping: imputed genes, cluster probabilities, mapped cells."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_spatial_impute._errors import InputError
from napari_spatial_impute.core.genes import resolve_gene_names
from napari_spatial_impute.core.preprocess import cluster_profiles
from napari_spatial_impute.io._sparse import is_sparse, sparse_product

if TYPE_CHECKING:
    from napari_spatial_impute.core.result import MappingResult
    from napari_spatial_impute.io._sparse import SparseMatrix

METHODS: tuple[str, ...] = ("auto", "neighbours", "probabilistic", "argmax")
SOURCES: tuple[str, ...] = ("auto", "neighbours", "tangram")


def resolve_method(result: MappingResult, method: str) -> str:
    """``"auto"``: the projection of the result's own map (``W S`` for the ensemble, else ``Mᵀ S``)."""
    if method not in METHODS:
        raise InputError(
            f"projection method {method!r} is not known; use one of {', '.join(METHODS)}."
        )
    if method == "auto":
        return "neighbours" if result.neighbours is not None else "probabilistic"
    if method == "neighbours" and result.neighbours is None:
        raise InputError(
            "this is a Tangram map, not the ensemble; use method='probabilistic', "
            "or map with method='ensemble' (the default in cells mode)."
        )
    return method


GENE_CHUNK = 2048


def resolve_reference_genes(result: MappingResult, genes: Sequence[str] | None) -> list[str]:
    """Reference names of ``genes`` (matched case-insensitively); all reference genes for ``None``."""
    names = list(map(str, result.reference.var_names))
    return names if genes is None else resolve_gene_names(names, genes)


def _unit_matrix(
    result: MappingResult, idx: np.ndarray, mean: bool = False
) -> np.ndarray | SparseMatrix:
    """Values of the mapped units for gene columns ``idx`` (units x genes)."""
    vals = result.reference_values
    if result.mode == "clusters":
        labels = pd.Categorical(
            result.reference.obs[result.cluster_key].astype(str), categories=result.unit_names
        )
        sub = ad.AnnData(X=vals.X[:, idx])
        profiles, _ = cluster_profiles(sub, labels, scale=not mean)
        return profiles
    X: np.ndarray | SparseMatrix = vals.X[:, idx]
    if result.filter_probabilities is not None and not mean:
        X = (
            sp.csr_matrix(sp.diags(result.filter_probabilities) @ X)
            if is_sparse(X)
            else X * result.filter_probabilities[:, None]
        )
    return X


def mapped_units(result: MappingResult) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic mapping ``i*(j) = argmax_i M_ij`` for each spatial cell.

    Returns
    -------
    ``(index, share)``: the unit index per spatial cell and that unit's share of the spatial
    cell's mapped mass (``M_i*j / Σ_i M_ij``).
    """
    P = result.probabilities
    if is_sparse(P):
        Pc = sp.csc_matrix(P)
        idx = np.asarray(Pc.argmax(axis=0)).ravel()
        top = Pc.max(axis=0).toarray().ravel()
    else:
        idx = np.asarray(P.argmax(axis=0)).ravel()
        top = P[idx, np.arange(P.shape[1])]
    col = np.asarray(P.sum(axis=0), dtype=np.float32).ravel()
    top = np.asarray(top, dtype=np.float32)
    share = np.divide(top, col, out=np.zeros_like(top), where=col > 0)
    return idx, share.astype(np.float32)


def project_genes(
    result: MappingResult, genes: Sequence[str] | None = None, method: str = "auto"
) -> ad.AnnData:
    """Impute reference genes at every spatial cell.

    Parameters
    ----------
    result
        A learned mapping.
    genes
        Reference genes to impute (any case); ``None`` imputes all of them.
    method
        ``"neighbours"``: ``W S``, the ensemble map's weighted mean of similar reference cells
        (see :mod:`napari_spatial_impute.core.neighbours`; the most accurate; equal to
        ``"probabilistic"`` for an ensemble map in cells mode);
        ``"probabilistic"``: ``Mᵀ S`` (the expected expression under the Tangram map,
        tangram-sc's ``project_genes``); ``"argmax"``: the profile of the reference cell (or
        cluster mean) that maps with the highest probability to each spatial cell; ``"auto"``:
        the projection of the map that ran (``"neighbours"`` for the ensemble, else
        ``"probabilistic"``).

    Returns
    -------
    AnnData spatial cells x genes (float32), with the spatial ``obs``/``obsm`` and
    ``var["is_training"]``.
    """
    method = resolve_method(result, method)
    names = resolve_reference_genes(result, genes)
    col_idx = result.reference.var_names.get_indexer(names)
    out = project_values(result, col_idx, method)
    var = result.reference.var.iloc[col_idx].copy()
    var["is_training"] = np.isin(names, result.genes.training_reference)
    return ad.AnnData(
        X=out,
        obs=result.spatial.obs.copy(),
        var=var,
        obsm={"spatial": np.asarray(result.spatial.obsm["spatial"])},
    )


def project_values(
    result: MappingResult,
    col_idx: np.ndarray,
    method: str,
    cells: np.ndarray | None = None,
    unit_idx: np.ndarray | None = None,
) -> np.ndarray:
    """Imputed values (float32, cells x genes) of the reference gene columns ``col_idx``.

    The matrix part of :func:`project_genes` (``method`` resolved already): no ``obs`` copied,
    so a viewer can impute one gene (or a few cells, ``cells``: spatial rows) at a time. Each
    cell's values are computed from its own map column, so a gene or a cell alone gives the
    same numbers as all of them for a sparse map. ``unit_idx``: :func:`mapped_units`'s index,
    for ``"argmax"`` (computed when not given).
    """
    col_idx = np.asarray(col_idx, dtype=np.int64)
    P: Any = result.probabilities
    block: Any
    W = result.neighbours
    if cells is not None:
        n_sp = len(cells)
    else:  # the ensemble's W S reads no P (a lean result's P may be empty)
        n_sp = W.shape[0] if method == "neighbours" and W is not None else P.shape[1]
    out = np.empty((n_sp, len(col_idx)), dtype=np.float32)
    if method == "argmax" and unit_idx is None:
        unit_idx, _ = mapped_units(result)
    if cells is not None:
        cells = np.asarray(cells, dtype=np.int64)
        W = None if W is None else W[cells]
        if method != "neighbours":  # the ensemble's W S reads no P
            P = sp.csc_matrix(P)[:, cells] if is_sparse(P) else P[:, cells]
        unit_idx = None if unit_idx is None else unit_idx[cells]
    for a in range(0, len(col_idx), GENE_CHUNK):
        idx = col_idx[a : a + GENE_CHUNK]
        if method == "neighbours":
            assert W is not None  # resolve_method refuses "neighbours" without the ensemble
            block = sparse_product(W, result.reference_values.X[:, idx])
        elif method == "probabilistic":
            U = _unit_matrix(result, idx)
            if is_sparse(P):
                block = P.T @ U
                block = block.toarray() if is_sparse(block) else block
            else:
                block = (U.T @ P).T if is_sparse(U) else P.T @ np.asarray(U, dtype=np.float32)
        else:
            U = _unit_matrix(result, idx, mean=True)
            assert unit_idx is not None  # computed above for "argmax"
            # rows by index: CSR (other sparse formats, e.g. COO, cannot be indexed)
            block = sp.csr_matrix(U)[unit_idx].toarray() if is_sparse(U) else U[unit_idx]
        out[:, a : a + len(idx)] = np.asarray(block, dtype=np.float32)
    return out


def project_cell_annotations(
    result: MappingResult, key: str | None = None, source: str = "auto"
) -> pd.DataFrame:
    """Probability of each reference category at each spatial cell (rows sum to 1).

    In cells mode the probability of category ``c`` at spatial cell ``j`` is
    ``Σ_{i in c} M_ij / Σ_i M_ij`` (the share of mapped cells of that category). In clusters
    mode it is ``f_c M_cj / Σ_c' f_c' M_c'j`` with ``f`` the cluster fractions, i.e. the
    expected number of cells of each cluster there.

    Parameters
    ----------
    result
        A learned mapping.
    key
        Reference obs column to project (default: the mapping's cluster key).
    source
        ``"neighbours"``: the share of each category among the ensemble map's weights of the
        spatial cell; ``"tangram"``: from the result's map ``M`` as described above (for an
        ensemble map ``M = Wᵀ``, so both give the same); ``"auto"``: the map that ran.

    Returns
    -------
    DataFrame spatial cells x categories, float32.
    """
    key = key or result.cluster_key
    if not key:
        raise InputError("no annotation to project; pass a reference obs column (--cluster-key).")
    if key not in result.reference.obs.columns:
        raise InputError(
            f"annotation {key!r} is not in the reference obs; columns there are: "
            f"{', '.join(map(str, result.reference.obs.columns)) or '(none)'}."
        )
    if source not in SOURCES:
        raise InputError(
            f"annotation source {source!r} is not known; use one of {', '.join(SOURCES)}."
        )
    if source == "auto":
        source = "neighbours" if result.neighbours is not None else "tangram"
    if source == "neighbours":
        if result.neighbours is None:
            raise InputError(
                "this is a Tangram map, not the ensemble; use source='tangram', "
                "or map with method='ensemble' (the default in cells mode)."
            )
        labels = pd.Categorical(result.reference.obs[key].astype(str)).remove_unused_categories()
        onehot = sp.csr_matrix(
            (np.ones(len(labels), dtype=np.float32), (np.arange(len(labels)), labels.codes)),
            shape=(len(labels), len(labels.categories)),
        )
        counts = (result.neighbours @ onehot).toarray()
        total = counts.sum(axis=1, keepdims=True)
        probs = np.divide(
            counts, total, out=np.full_like(counts, 1.0 / counts.shape[1]), where=total > 0
        )
        return pd.DataFrame(
            probs.astype(np.float32),
            index=result.spatial.obs_names.copy(),
            columns=list(map(str, labels.categories)),
        )
    P = result.probabilities
    if result.mode == "clusters":
        if key != result.cluster_key:
            raise InputError(
                f"clusters mode mapped {result.cluster_key!r}; project that key or map in cells mode."
            )
        mass = (
            sp.diags(result.unit_weights) @ P if is_sparse(P) else P * result.unit_weights[:, None]
        )
        cats = list(result.unit_names)
        counts = mass.toarray().T if is_sparse(mass) else mass.T
    else:
        labels = pd.Categorical(result.reference.obs[key].astype(str))
        labels = labels.remove_unused_categories()
        cats = list(map(str, labels.categories))
        onehot = sp.csr_matrix(
            (np.ones(len(labels), dtype=np.float32), (np.arange(len(labels)), labels.codes)),
            shape=(len(labels), len(cats)),
        )
        w = P if result.filter_probabilities is None else P * result.filter_probabilities[:, None]
        summed = onehot.T @ w
        counts = np.asarray(summed.toarray() if is_sparse(summed) else summed).T
    total = counts.sum(axis=1, keepdims=True)
    probs = np.divide(counts, total, out=np.full_like(counts, 1.0 / len(cats)), where=total > 0)
    return pd.DataFrame(
        probs.astype(np.float32), index=result.spatial.obs_names.copy(), columns=cats
    )


def top_mapped_units(result: MappingResult, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` units with the largest mapping probability to each spatial cell.

    Returns
    -------
    ``(index, share)`` arrays of shape ``(n_spatial, k)``: unit indices (best first) and their
    share of the spatial cell's mapped mass.
    """
    P = result.probabilities
    k = max(1, min(k, P.shape[0]))
    if is_sparse(P):
        return _top_sparse(sp.csr_matrix(P.T), k)
    part = np.argpartition(-P, kth=k - 1, axis=0)[:k]  # k x n_sp
    vals = np.take_along_axis(P, part, axis=0)
    order = np.argsort(-vals, axis=0)
    part = np.take_along_axis(part, order, axis=0)
    vals = np.take_along_axis(vals, order, axis=0)
    col = P.sum(axis=0)
    share = np.divide(vals, col[None, :], out=np.zeros_like(vals), where=col[None, :] > 0)
    return part.T.astype(np.int32), share.T.astype(np.float32)


#: Rows of the map handled at once by :func:`_top_sparse` (its arrays are rows x the longest
#: row: at 10^6 cells x 117 neighbours at once they held 6 GiB).
TOP_ROWS = 16_384


def _top_sparse(
    PT: sp.csr_matrix, k: int, width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` entries of each row of a CSR matrix (spatial x units), padded with -1 / 0;
    :data:`TOP_ROWS` rows at a time, each padded to the longest row of all (every row sorted as
    in one pass: the same result, ties included, with bounded memory)."""
    n_rows = PT.shape[0]
    lengths = np.diff(PT.indptr)
    width = max(int(lengths.max(initial=0)), k) if width is None else width
    if n_rows > TOP_ROWS:
        parts = [_top_sparse(PT[a : a + TOP_ROWS], k, width) for a in range(0, n_rows, TOP_ROWS)]
        return np.concatenate([i for i, _ in parts]), np.concatenate([s for _, s in parts])
    vals = np.full((n_rows, width), -1.0, dtype=np.float32)
    cols = np.full((n_rows, width), -1, dtype=np.int64)
    row_of = np.repeat(np.arange(n_rows), lengths)
    pos = np.arange(PT.nnz) - np.repeat(PT.indptr[:-1], lengths)
    vals[row_of, pos] = PT.data
    cols[row_of, pos] = PT.indices
    order = np.argsort(-vals, axis=1)[:, :k]
    top_v = np.take_along_axis(vals, order, axis=1)
    top_i = np.take_along_axis(cols, order, axis=1)
    tot = np.asarray(PT.sum(axis=1), dtype=np.float32).ravel()
    share = np.divide(
        top_v, tot[:, None], out=np.zeros_like(top_v), where=(tot[:, None] > 0) & (top_v > 0)
    )
    top_i[top_v < 0] = -1
    return top_i.astype(np.int32), share.astype(np.float32)
