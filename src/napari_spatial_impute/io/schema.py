"""The result file's contract: its keys and layer names, and readers of a result AnnData.

A result (``napari-spatial-impute map --out``, :meth:`MappingResult.to_anndata`) is an AnnData of
spatial cells x imputed genes with

* ``uns[UNS_KEY]`` (``"spatial_impute"``): parameters, per-epoch history, training score,
  calibration, FOV column;
* ``layers[interval_layer(level)]`` (``"interval_90_halfwidth"``, ...): prediction-interval
  half-widths at nominal coverage ``level`` %;
* ``var["predicted_pearson"]``, ``var["is_training"]`` and tangram-sc's training-gene columns.

Every module that writes or reads these names takes them from here.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute._errors import InputError

UNS_KEY = "spatial_impute"
#: ``uns`` key of spatial data read from a SpatialData store: where the cells came from (store,
#: table, coordinate system, region and instance keys), see :mod:`napari_spatial_impute.io.sdata`.
SDATA_KEY = "spatialdata"
#: Default name of the results table written back into a SpatialData store.
RESULT_TABLE = "spatial_impute"


def interval_layer(level: str) -> str:
    """Name of the layer with the interval half-widths at ``level`` % (``"90"`` -> ``"interval_90_halfwidth"``)."""
    return f"interval_{level}_halfwidth"


def level_name(level: float) -> str:
    """``0.9`` -> ``"90"``."""
    return str(int(round(level * 100)))


_LAYER_RE = re.compile(r"^interval_(\d+)_halfwidth$")


def interval_levels(result: ad.AnnData | None) -> list[str]:
    """Levels (``"90"``, ``"67"``, ...) with an interval layer in ``result``, widest first."""
    if result is None:
        return []
    found = [m.group(1) for k in result.layers.keys() if (m := _LAYER_RE.match(str(k)))]
    return sorted(found, key=int, reverse=True)


def has_reliability(result: ad.AnnData | None) -> bool:
    """Whether ``result`` has a per-gene predicted Pearson."""
    return result is not None and "predicted_pearson" in result.var.columns


def resolve_gene(result: ad.AnnData, gene: str) -> str:
    """Reference spelling of ``gene`` (case-insensitive); raises :class:`InputError` if absent."""
    if gene in result.var_names:
        return str(gene)
    lower = {g.lower(): g for g in map(str, result.var_names)}
    hit = lower.get(str(gene).lower())
    if hit is None:
        raise InputError(
            f"gene {gene!r} is not among the {result.n_vars} imputed genes; pick one from the list."
        )
    return hit


def interval_level(result: ad.AnnData, level: str | int | float) -> str:
    name = str(int(round(float(level) * 100))) if float(level) < 1 else str(int(float(level)))
    if name not in interval_levels(result):
        have = interval_levels(result)
        raise InputError(
            f"the result has no {name}% intervals"
            + (
                f"; levels are {', '.join(have)}."
                if have
                else " (the ensemble map has intervals, a Tangram map none)."
            )
        )
    return name


def halfwidths(
    result: ad.AnnData, gene: str, level: str | int | float = "90", rows: np.ndarray | None = None
) -> np.ndarray:
    """Half-width of one gene's interval at each cell (float32), ``rows`` only when given."""
    name = interval_level(result, level)
    from napari_spatial_impute.io.lazy import column

    j = result.var_names.get_loc(resolve_gene(result, gene))
    col = column(result.layers[interval_layer(name)], j).astype(np.float32, copy=False)
    return col if rows is None else col[np.asarray(rows, dtype=np.int64)]


def is_result_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (an ``.h5ad`` file, or an AnnData zarr group such as a store's table)
    is a mapping result of this plugin (``uns['spatial_impute']``) with a dense ``X``; cheap:
    nothing is read but the keys. ``False`` for anything unreadable."""
    from napari_spatial_impute.io.lazy import is_dense

    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if p.is_dir():
                import zarr

                root: Any = zarr.open_group(str(p), mode="r")
                return f"uns/{UNS_KEY}" in root and "X" in root and is_dense(root["X"])
            import h5py

            with h5py.File(p, "r") as f:
                return f"uns/{UNS_KEY}" in f and "X" in f and is_dense(f["X"])
    except Exception:
        return False


def history_frame(adata: ad.AnnData) -> pd.DataFrame:
    """Per-epoch objective terms of a result AnnData as a DataFrame."""
    hist = adata.uns[UNS_KEY]["history"]
    return pd.DataFrame({k: np.asarray(v, dtype=np.float64) for k, v in hist.items()})


def training_genes_frame(adata: ad.AnnData) -> pd.DataFrame:
    """tangram-sc's ``train_genes_df`` from a result AnnData, best score first."""
    cols = ["train_score", "sparsity_sc", "sparsity_sp", "sparsity_diff"]
    df: pd.DataFrame = adata.var.loc[adata.var["is_training"].astype(bool), cols].copy()
    return df.sort_values("train_score", ascending=False)
