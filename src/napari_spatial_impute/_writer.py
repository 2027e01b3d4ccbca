"""napari writer: the plugin's Points layers back to one ``.h5ad`` file, with nothing lost."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .io import write_h5ad_atomic
from .layers import layers_to_anndata


def write_points_h5ad(path: str, layer_data: Sequence[tuple[Any, dict[str, Any], str]]) -> list[str]:
    """Write Points layers to ``path`` (``.h5ad`` appended when missing).

    FOV layers of one data set are concatenated back into their source AnnData (coordinates and
    features from the layers; imputed values, probabilities and parameters from the source); plain
    Points layers become cells with no genes. See
    :func:`napari_spatial_impute.layers.layers_to_anndata`.

    Returns
    -------
    The paths written (one).
    """
    target = Path(path)
    if target.suffix.lower() != ".h5ad":
        target = target.with_name(target.name + ".h5ad")
    adata = layers_to_anndata(list(layer_data))
    return [str(write_h5ad_atomic(adata, target))]
