"""Value transforms and dense training matrices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from napari_spatial_impute._errors import InputError
from napari_spatial_impute.core.settings import TRANSFORMS, Transform
from napari_spatial_impute.io._sparse import is_sparse
from napari_spatial_impute.io.files import describe_values


def check_transform(transform: str) -> Transform:
    """Validate a transform name."""
    if transform not in TRANSFORMS:
        raise InputError(
            f"transform {transform!r} is not known; use one of {', '.join(TRANSFORMS)}."
        )
    return transform  # type: ignore[return-value]


def resolve_transform(
    adata: ad.AnnData, transform: Transform
) -> Literal["none", "normalize_log1p"]:
    """The transform ``transform`` applies to this data set.

    ``"auto"`` is ``"normalize_log1p"`` for a set whose values are raw counts
    (:func:`~napari_spatial_impute.io.files.describe_values`) and ``"none"`` for any other
    (log-transformed, quantile-normalised, scaled values are used as given).
    """
    if transform == "auto":
        return "normalize_log1p" if describe_values(adata.X) == "raw counts" else "none"
    return "normalize_log1p" if transform == "normalize_log1p" else "none"


def describe_transform(reference: ad.AnnData, spatial: ad.AnnData, transform: Transform) -> str:
    """One line saying what ``transform`` does to each data set.

    For example ``"reference raw counts -> normalised to median total, log1p; spatial
    log-transformed -> as given"``.
    """
    parts = []
    for role, adata in (("reference", reference), ("spatial", spatial)):
        done = resolve_transform(adata, transform)
        what = "normalised to median total, log1p" if done == "normalize_log1p" else "as given"
        parts.append(f"{role} {describe_values(adata.X)} -> {what}")
    return "; ".join(parts)


def apply_transform(adata: ad.AnnData, transform: Transform, role: str = "data") -> ad.AnnData:
    """Return ``adata``'s X (only; float32 CSR or dense) with ``transform`` applied, in a new
    AnnData (``"none"`` on float32 values: the same arrays, not a copy).

    ``"none"`` keeps values as given (tangram-sc's behaviour). ``"normalize_log1p"`` scales each
    cell to the median total count of the data set over its own genes, then takes ``log1p``; it
    refuses negative values (``role`` names the set in the message). ``"auto"`` decides for this
    set alone (:func:`resolve_transform`): raw counts are normalised and log1p'd, other values
    are kept as given.
    """
    done = resolve_transform(adata, transform)
    X = adata.X
    # float32 CSR as given is not copied (``"none"``: the values are the data's own, read only;
    # ``"normalize_log1p"`` makes new arrays): a copy of the data is not held twice
    X = X.astype(np.float32, copy=False) if is_sparse(X) else np.asarray(X, dtype=np.float32)
    if is_sparse(X):
        X = sp.csr_matrix(X)
    if done == "normalize_log1p":
        values = np.asarray(X.data) if isinstance(X, sp.csr_matrix) else np.asarray(X)
        if values.size and float(values.min()) < 0:
            raise InputError(
                f"the {role} holds negative values (z-scored or centred data?), which cannot be "
                "normalised to a total count and log1p'd; use transform 'none' (--transform none) "
                "to map them as given, or give counts."
            )
        totals = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
        positive = totals[totals > 0]
        target = float(np.median(positive)) if positive.size else 1.0
        scale = np.divide(target, totals, out=np.zeros_like(totals), where=totals > 0)
        if is_sparse(X):
            X = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ X)
            X.data = np.log1p(X.data)
        else:
            X = np.log1p(X * scale[:, None].astype(np.float32))
    out = ad.AnnData(
        X=X, obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=adata.var_names)
    )
    return out


def dense_columns(adata: ad.AnnData, genes: Sequence[str]) -> np.ndarray:
    """Dense float32 ``(n_obs, len(genes))`` copy of the named columns of ``X``."""
    idx = adata.var_names.get_indexer(list(genes))
    if (idx < 0).any():
        missing = [g for g, i in zip(genes, idx, strict=True) if i < 0][:3]
        raise InputError(f"genes {missing} are not in the data; check the gene names.")
    X = adata.X[:, idx]
    if is_sparse(X):
        X = X.toarray()
    return np.ascontiguousarray(X, dtype=np.float32)


def cluster_profiles(
    adata: ad.AnnData, labels: pd.Categorical, scale: bool = True
) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray]:
    """Sum (``scale``) or mean expression per cluster and each cluster's fraction of cells.

    Returns
    -------
    ``(profiles, fractions)`` with one row per category of ``labels`` (categories with no
    cells are not allowed).
    """
    codes = np.asarray(labels.codes)
    k = len(labels.categories)
    indicator = sp.csr_matrix(
        (np.ones(len(codes), dtype=np.float32), (codes, np.arange(len(codes)))),
        shape=(k, len(codes)),
    )
    counts = np.asarray(indicator.sum(axis=1)).ravel()
    X = adata.X
    profiles = indicator @ X
    if is_sparse(profiles):
        profiles = profiles.toarray()
    profiles = np.asarray(profiles, dtype=np.float32)
    if not scale:
        profiles = profiles / counts[:, None].astype(np.float32)
    return profiles, (counts / counts.sum()).astype(np.float32)
