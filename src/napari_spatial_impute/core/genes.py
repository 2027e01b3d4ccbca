"""Gene harmonisation: case-insensitive matching and the choice of training genes."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputError
from napari_spatial_impute.io._sparse import is_sparse


@dataclass
class GenePlan:
    """Which genes are shared, which train the mapping, and which were dropped and why.

    Attributes
    ----------
    shared_reference
        Shared genes as the reference names them (reference order).
    shared_spatial
        The same genes as the spatial data names them (same order).
    training_reference
        Training genes, reference names.
    training_spatial
        Training genes, spatial names (same order as ``training_reference``).
    dropped
        Genes removed from training, mapped to the reason (no counts in one of the sets). They
        are still imputed in the output.
    not_shared
        Genes a user list asked for that are not in both sets.
    source
        How training genes were chosen: ``"overlap"``, ``"list"`` or ``"markers"``.
    """

    shared_reference: list[str]
    shared_spatial: list[str]
    training_reference: list[str]
    training_spatial: list[str]
    dropped: dict[str, str] = field(default_factory=dict)
    not_shared: list[str] = field(default_factory=list)
    source: str = "overlap"

    def summary(self) -> str:
        """One line describing the plan."""
        text = (
            f"{len(self.shared_reference)} shared genes, {len(self.training_reference)} used for "
            f"training ({self.source})"
        )
        if self.dropped:
            text += f"; {len(self.dropped)} dropped from training (no counts in one set)"
        if self.not_shared:
            text += f"; {len(self.not_shared)} requested genes not in both sets"
        return text


def _name_style(names: Sequence[str]) -> str:
    sample = [str(n) for n in list(names)[:200]]
    if not sample:
        return "no genes"
    if sum(bool(re.match(r"^ENS[A-Z]*G\d+", n)) for n in sample) > len(sample) / 2:
        style = "Ensembl ids"
    elif sum(n.isupper() for n in sample) > len(sample) / 2:
        style = "upper-case symbols"
    elif sum(n.islower() for n in sample) > len(sample) / 2:
        style = "lower-case symbols"
    else:
        style = "mixed-case symbols"
    return f"{style}, e.g. {', '.join(sample[:3])}"


def match_genes(
    reference_genes: Sequence[str], spatial_genes: Sequence[str]
) -> list[tuple[str, str]]:
    """Pair genes of two sets case-insensitively, in reference order.

    Returns
    -------
    ``(reference_name, spatial_name)`` for every gene present in both sets.
    """
    spatial_by_lower = {str(g).lower(): str(g) for g in spatial_genes}
    return [
        (str(g), spatial_by_lower[str(g).lower()])
        for g in reference_genes
        if str(g).lower() in spatial_by_lower
    ]


def _column_nonzero(adata: ad.AnnData, genes: Sequence[str]) -> np.ndarray:
    X = adata[:, list(genes)].X
    if is_sparse(X):
        return np.asarray(X.astype(bool).sum(axis=0, dtype=np.int64)).ravel()
    return np.asarray(np.count_nonzero(np.asarray(X), axis=0))


def marker_genes(
    reference: ad.AnnData,
    cluster_key: str,
    n_per_cluster: int = 100,
    genes: Sequence[str] | None = None,
) -> list[str]:
    """Top marker genes per cluster with ``scanpy.tl.rank_genes_groups`` (Wilcoxon).

    The test runs on a total-count-normalised, ``log1p`` copy of the reference restricted to
    ``genes`` (all genes when ``None``); the reference itself is not modified.

    Returns
    -------
    The union of the top ``n_per_cluster`` genes of each cluster, in reference order.
    """
    import scanpy as sc

    if cluster_key not in reference.obs.columns:
        raise InputError(
            f"cluster key {cluster_key!r} is not in the reference obs; columns there are: "
            f"{', '.join(map(str, reference.obs.columns)) or '(none)'}."
        )
    sub = reference[:, list(genes)] if genes is not None else reference
    work = ad.AnnData(
        X=sub.X.copy(), obs=pd.DataFrame(index=sub.obs_names), var=pd.DataFrame(index=sub.var_names)
    )
    work.obs["group"] = pd.Categorical(reference.obs[cluster_key].astype(str).to_numpy())
    counts = work.obs["group"].value_counts()
    keep = counts[counts >= 2].index
    if len(keep) < 2:
        raise InputError(
            f"marker genes need at least two clusters with two or more cells in {cluster_key!r}; "
            "use --genes overlap or give a gene list."
        )
    work = work[work.obs["group"].isin(keep)].copy()
    work.obs["group"] = work.obs["group"].cat.remove_unused_categories()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.normalize_total(work)
        sc.pp.log1p(work)
        sc.tl.rank_genes_groups(work, "group", method="wilcoxon", n_genes=n_per_cluster)
    names = pd.DataFrame(work.uns["rank_genes_groups"]["names"])
    chosen = set(names.to_numpy().ravel().astype(str))
    return [g for g in work.var_names if g in chosen]


def plan_genes(
    reference: ad.AnnData,
    spatial: ad.AnnData,
    genes: str | Sequence[str] = "overlap",
    cluster_key: str | None = None,
    n_markers: int = 100,
) -> GenePlan:
    """Decide the shared and training genes of a mapping.

    Parameters
    ----------
    reference, spatial
        Validated AnnData objects.
    genes
        ``"overlap"`` (all shared genes), ``"markers"`` (top ``n_markers`` per cluster of
        ``cluster_key`` among shared genes) or a list of gene names (any case).
    cluster_key
        Reference obs column with clusters, needed for ``"markers"``.
    n_markers
        Markers per cluster.

    Returns
    -------
    A :class:`GenePlan`. Genes with no counts in either set are dropped from training and
    reported in ``dropped``; they are never dropped from the imputed output.
    """
    pairs = match_genes(reference.var_names, spatial.var_names)
    if not pairs:
        raise InputError(
            "no shared genes between reference and spatial data (reference: "
            f"{_name_style(reference.var_names)}; spatial: {_name_style(spatial.var_names)}); "
            "both must name genes the same way (symbols or Ensembl ids; case is ignored)."
        )
    shared_ref = [r for r, _ in pairs]
    ref_to_sp = dict(pairs)
    not_shared: list[str] = []
    if isinstance(genes, str) and genes == "overlap":
        candidates = shared_ref
        source = "overlap"
    elif isinstance(genes, str) and genes == "markers":
        if cluster_key is None:
            raise InputError("marker genes need a cluster key; pass cluster_key (--cluster-key).")
        candidates = marker_genes(reference, cluster_key, n_markers, genes=shared_ref)
        source = "markers"
    elif isinstance(genes, str):
        raise InputError(
            f"genes={genes!r} is not understood; use 'overlap', 'markers' or a list of gene names."
        )
    else:
        by_lower = {g.lower(): g for g in shared_ref}
        requested = [str(g) for g in genes]
        if not requested:
            raise InputError("the training gene list is empty; give at least one shared gene.")
        candidates = []
        seen: set[str] = set()
        for g in requested:
            hit = by_lower.get(g.lower())
            if hit is None:
                not_shared.append(g)
            elif hit not in seen:
                seen.add(hit)
                candidates.append(hit)
        source = "list"
        if not candidates:
            raise InputError(
                f"none of the {len(requested)} requested training genes is in both data sets "
                f"(e.g. {requested[:3]}); check the names against the shared genes."
            )
    nz_ref = _column_nonzero(reference, candidates)
    nz_sp = _column_nonzero(spatial, [ref_to_sp[g] for g in candidates])
    dropped: dict[str, str] = {}
    training: list[str] = []
    for g, a, b in zip(candidates, nz_ref, nz_sp, strict=True):
        if a == 0 and b == 0:
            dropped[g] = "no counts in reference or spatial data"
        elif a == 0:
            dropped[g] = "no counts in reference"
        elif b == 0:
            dropped[g] = "no counts in spatial data"
        else:
            training.append(g)
    if not training:
        raise InputError(
            f"all {len(candidates)} candidate training genes have no counts in one of the sets; "
            "check that X holds expression values."
        )
    return GenePlan(
        shared_reference=shared_ref,
        shared_spatial=[ref_to_sp[g] for g in shared_ref],
        training_reference=training,
        training_spatial=[ref_to_sp[g] for g in training],
        dropped=dropped,
        not_shared=not_shared,
        source=source,
    )


def read_gene_list(path: str) -> list[str]:
    """Read gene names from a text file: one per line or comma/space separated; ``#`` comments."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise InputError(
            f"cannot read gene list {path!r} ({exc.strerror}); check the path."
        ) from None
    except UnicodeDecodeError:
        raise InputError(
            f"gene list {path!r} is not a UTF-8 text file; give a text file with one gene name per line."
        ) from None
    names: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        names.extend(t for t in re.split(r"[,\s]+", line) if t)
    if not names:
        raise InputError(f"gene list {path!r} holds no gene names; put one name per line.")
    return names


def resolve_gene_names(names: Sequence[str], genes: Sequence[str] | str) -> list[str]:
    """The names in ``names`` of ``genes`` (matched case-insensitively, each once), refusing unknown ones."""
    if isinstance(genes, str):
        genes = [genes]
    by_lower = {str(g).lower(): str(g) for g in names}
    out: list[str] = []
    missing: list[str] = []
    for g in genes:
        hit = by_lower.get(str(g).lower())
        (out if hit is not None else missing).append(hit if hit is not None else str(g))
    if missing:
        raise InputError(
            f"{len(missing)} requested genes are not in the reference (e.g. {missing[:3]}); "
            "only reference genes can be imputed."
        )
    return list(dict.fromkeys(out))  # a gene asked for twice (any case) is imputed once
