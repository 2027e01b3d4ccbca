"""Sample data (File > Open Sample): the bundled MERFISH hypothalamus pair and a mapping of it."""

from __future__ import annotations

from ._qt._sync import hook_current_viewer
from .layers import LayerData, bounds_of, ensure_umap, reference_layer, spatial_layers

#: Epochs of the sample mapping (about a second on a laptop CPU).
SAMPLE_EPOCHS = 200


def merfish_pair() -> list[LayerData]:
    """The 750 MERFISH cells (tissue, µm) and the 1,308 reference cells at their UMAP, beside it.

    The reference UMAP is computed with scanpy on first use (a few seconds).
    """
    from .datasets import load_merfish_hypothalamus

    hook_current_viewer()
    reference, spatial = load_merfish_hypothalamus()
    layers = spatial_layers(spatial, name="MERFISH spatial", role="spatial")
    ensure_umap(reference)
    bounds = bounds_of([d for d, _, _ in layers])
    layers.append(reference_layer(reference, cluster_key="cell_type", beside=bounds, name="MERFISH reference UMAP"))
    return layers


def merfish_mapping() -> list[LayerData]:
    """A finished mapping of the MERFISH pair (cells mode, ``SAMPLE_EPOCHS`` epochs, seed 0).

    The layer is coloured by the predicted cell type; its metadata holds the whole result AnnData
    (all 134 reference genes imputed, cluster probabilities, parameters).
    """
    from .datasets import load_merfish_hypothalamus
    from .mapping import map_cells_to_space

    hook_current_viewer()
    reference, spatial = load_merfish_hypothalamus()
    result = map_cells_to_space(reference, spatial, cluster_key="cell_type", epochs=SAMPLE_EPOCHS, seed=0)
    return spatial_layers(result.to_anndata(), role="result")
