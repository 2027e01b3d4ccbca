"""Sample data (File > Open Sample): the bundled MERFISH hypothalamus pair and a mapping of it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anndata as ad
import numpy as np

from napari_spatial_impute.plugin.sync import hook_current_viewer
from napari_spatial_impute.viz.layers import (
    LayerData,
    bounds_of,
    ensure_umap,
    reference_layer,
    spatial_layers,
)


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "napari-spatial-impute"


def cached_umap(reference: ad.AnnData) -> np.ndarray:
    """``ensure_umap`` with the embedding cached on disk (keyed by the cell names), so the sample
    opens at once after the first time. A cache that cannot be read or written is ignored."""
    digest = hashlib.sha1("\n".join(map(str, reference.obs_names)).encode()).hexdigest()[:16]
    path = _cache_dir() / f"umap-{reference.n_obs}-{digest}.npy"
    try:
        emb = np.load(path)
        if emb.shape == (reference.n_obs, 2):
            reference.obsm["X_umap"] = emb
            return emb
    except (OSError, ValueError):
        pass
    emb = ensure_umap(reference)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, np.asarray(emb, dtype=np.float32))
        os.replace(tmp, path)
    except OSError:
        pass
    return emb


def merfish_pair() -> list[LayerData]:
    """The 750 MERFISH cells (tissue, µm) and the 1,308 reference cells at their UMAP, beside it.

    The reference UMAP is computed with scanpy on first use (a few seconds) and then cached in
    ``$XDG_CACHE_HOME/napari-spatial-impute`` (``~/.cache`` by default).
    """
    from napari_spatial_impute.io.datasets import load_merfish_hypothalamus

    hook_current_viewer()
    reference, spatial = load_merfish_hypothalamus()
    layers = spatial_layers(spatial, name="MERFISH spatial", role="spatial")
    cached_umap(reference)
    bounds = bounds_of([d for d, _, _ in layers])
    layers.append(
        reference_layer(
            reference, cluster_key="cell_type", beside=bounds, name="MERFISH reference UMAP"
        )
    )
    return layers


def merfish_mapping() -> list[LayerData]:
    """A finished mapping of the MERFISH pair (the default ensemble map, cells mode, seed 0).

    The layer is coloured by the predicted cell type; its metadata holds the whole result AnnData
    (all 134 reference genes imputed, cluster probabilities, parameters).
    """
    from napari_spatial_impute.core.export import result_to_anndata
    from napari_spatial_impute.core.mapping import map_cells_to_space
    from napari_spatial_impute.io.datasets import load_merfish_hypothalamus

    hook_current_viewer()
    reference, spatial = load_merfish_hypothalamus()
    result = map_cells_to_space(reference, spatial, cluster_key="cell_type", seed=0)
    return spatial_layers(result_to_anndata(result), role="result")
