"""Prediction intervals and per-gene reliability of a result, as layer data (no Qt, no viewer).

A result mapped in cells mode (the ensemble or a Tangram map) carries (see :mod:`napari_spatial_impute.core.export`):

* ``layers["interval_<level>_halfwidth"]``: the imputed value's prediction interval is
  ``X ± halfwidth`` at nominal coverage ``<level>`` % (90 and 67 by default);
* ``var["predicted_pearson"]``: the predicted held-out Pearson of every imputed gene;
* ``uns["spatial_impute"]["uncertainty"]``: levels, per-group quantiles, calibration genes.

Older results (or results of the clusters and constrained modes) lack them: every function here then
reports "nothing" (empty list, ``None``) instead of failing, so the widgets can hide their
controls.

The interval layer (one for all samples) is named ``"<gene> <level>% interval width"``; its value is the
full width ``2 x halfwidth`` and their metadata dict holds ``kind = "interval"`` and ``level``
(e.g. ``"90"``) beside the usual entries (:func:`napari_spatial_impute.viz.layers.plugin_meta`).
"""

from __future__ import annotations

from collections.abc import Iterable

import anndata as ad
import numpy as np
import pandas as pd

from napari_spatial_impute.io.schema import (
    halfwidths,
    has_reliability,
    interval_layer,
    interval_level,
    interval_levels,
    resolve_gene,
)
from napari_spatial_impute.viz.explore import colorize, section_points_spec
from napari_spatial_impute.viz.layers import PointsSpec, layer_name, robust_limits

INTERVAL_ROLE = "interval"
INTERVAL_COLORMAP = "plasma"
#: Colour of the cells greyed out for a wide interval (NaN colour of the imputed colormap).
GREY = (0.55, 0.55, 0.55, 0.55)


def interval_layer_name(gene: str, level: str, sample: str = "") -> str:
    """``"Gad1 90% interval width"`` (``" · <sample>"`` with samples)."""
    return layer_name(gene, f"{level}% interval width", sample)


def interval_widths(
    result: ad.AnnData, gene: str, level: str | int | float = "90", rows: np.ndarray | None = None
) -> np.ndarray:
    """Full width ``2 x halfwidth`` of one gene's interval at each cell (float32)."""
    return (2.0 * halfwidths(result, gene, level, rows)).astype(np.float32)


def wide_mask(widths: np.ndarray, threshold: float) -> np.ndarray:
    """Cells whose interval is wider than ``threshold`` (NaN widths count as wide)."""
    w = np.asarray(widths, dtype=np.float64)
    return ~(w <= float(threshold))


def masked_values(vals: np.ndarray, widths: np.ndarray, threshold: float) -> np.ndarray:
    """``vals`` with NaN where the interval is wider than ``threshold`` (NaN colours grey)."""
    out = np.asarray(vals, dtype=np.float32).copy()
    out[wide_mask(widths, threshold)] = np.nan
    return out


def interval_layer_specs(
    result: ad.AnnData,
    gene: str,
    level: str | int | float = "90",
    *,
    fov_key: str | None = None,
    sample_key: str | None = None,
    samples: Iterable[str] | None = None,
    size: float | None = None,
    hover: bool = True,
) -> list[PointsSpec]:
    """The interval-width Points layer of one gene (every sample in it; a list of one), coloured
    directly like the imputed layer (:func:`~napari_spatial_impute.viz.explore.colorize`).

    Parameters
    ----------
    result
        Result AnnData with interval layers.
    gene
        Imputed gene (any case).
    level
        Nominal coverage: ``"90"``, ``90`` or ``0.9``.
    fov_key, sample_key
        FOV and sample columns of ``result.obs`` (see
        :func:`~napari_spatial_impute.viz.explore.value_layer_specs`).
    samples
        Samples to build (all when ``None``).
    size
        Point size in data units (default from the cell spacing).
    hover
        Add the hover columns of the other exploration layers.
    """
    gene = resolve_gene(result, gene)
    level = interval_level(result, level)
    widths = interval_widths(result, gene, level)
    column = f"{gene} {level}% interval width"
    limits = robust_limits(widths)
    return [
        section_points_spec(
            result,
            lambda rows: pd.DataFrame({column: widths[rows]}),
            samples=samples,
            fov_key=fov_key,
            sample_key=sample_key,
            size=size,
            hover=hover,
            colors=lambda feats: colorize(feats[column].to_numpy(), INTERVAL_COLORMAP, limits),
            meta={
                "kind": INTERVAL_ROLE,
                "level": level,
                "value": gene,
                "colormap": INTERVAL_COLORMAP,
                "limits": limits,
            },
            name=interval_layer_name(gene, level),
        )
    ]


# ---------------------------------------------------------------------------------------------
# per-gene reliability and calibration summary

RELIABILITY_COLUMNS: tuple[str, ...] = ("gene", "predicted_pearson", "is_training", "train_score")


def reliability_table(result: ad.AnnData) -> pd.DataFrame:
    """One row per imputed gene: predicted Pearson, training gene or not, training score.

    Sorted by predicted Pearson, most reliable first (ties by gene name). Empty (with the columns)
    when the result has no reliability estimates.
    """
    if not has_reliability(result):
        return pd.DataFrame(columns=list(RELIABILITY_COLUMNS))
    var = result.var
    df = pd.DataFrame(
        {
            "gene": np.asarray(result.var_names, dtype=object).astype(str),
            "predicted_pearson": var["predicted_pearson"].to_numpy(dtype=np.float64),
            "is_training": (
                var["is_training"].astype(bool).to_numpy()
                if "is_training" in var
                else np.zeros(result.n_vars, dtype=bool)
            ),
            "train_score": (
                var["train_score"].to_numpy(dtype=np.float64)
                if "train_score" in var
                else np.full(result.n_vars, np.nan)
            ),
        }
    )
    df = df.sort_values(["predicted_pearson", "gene"], ascending=[False, True], na_position="last")
    return df.reset_index(drop=True)


def mean_widths(result: ad.AnnData) -> dict[str, float]:
    """Mean interval width (``2 x halfwidth``, over all cells and genes) of each level.

    The result's own record when it has one for its shape (``uns['spatial_impute']
    ['uncertainty']['mean_width']``, written with the result), else from the layers, gene block
    by gene block (a lazy result's layers are never read whole).
    """
    from napari_spatial_impute.io.lazy import mean_of_columns
    from napari_spatial_impute.io.schema import level_name

    info = result.uns.get("spatial_impute", {}).get("uncertainty", {})
    stored = dict(
        zip(
            (level_name(float(lv)) for lv in info.get("levels", [])),
            np.asarray(info.get("mean_width", []), dtype=np.float64),
            strict=False,
        )
    )
    same_shape = tuple(np.asarray(info.get("mean_width_shape", []))) == tuple(result.shape)
    out = {}
    for lv in interval_levels(result):
        if same_shape and lv in stored:
            out[lv] = float(stored[lv])
        else:
            out[lv] = 2.0 * mean_of_columns(result.layers[interval_layer(lv)])
    return out


def calibration_text(result: ad.AnnData | None) -> str:
    """A few lines on how the intervals were calibrated and how wide they are."""
    if result is None:
        return "No mapping result yet."
    levels = interval_levels(result)
    if not levels and not has_reliability(result):
        return (
            "This result has no prediction intervals or reliability estimates: it was mapped in "
            "clusters or constrained mode, without Uncertainty, or by an older version; a map in "
            "cells mode with Uncertainty (the default) has them."
        )
    info = result.uns.get("spatial_impute", {}).get("uncertainty", {})
    lines = []
    n_cal = len(info.get("calibration_genes", []))
    groups = list(info.get("group_names", []))
    if levels:
        lines.append(
            f"Conformal prediction intervals, calibrated on {n_cal} training genes held out in "
            f"turn, quantiles per cell group ({len(groups)} groups)."
            if n_cal
            else "Conformal prediction intervals."
        )
        widths = mean_widths(result)
        lines.append(
            "Mean interval width: "
            + ", ".join(f"{lv}%: {widths[lv]:.3g}" for lv in levels)
            + " (imputed value ± half of it)."
        )
    if has_reliability(result):
        p = result.var["predicted_pearson"].to_numpy(dtype=np.float64)
        p = p[np.isfinite(p)]
        if p.size:
            lines.append(
                f"Predicted held-out Pearson: median {np.median(p):.3f} "
                f"(range {p.min():.3f} to {p.max():.3f}) over {p.size} genes."
            )
    return "\n".join(lines)


__all__ = [
    "GREY",
    "INTERVAL_COLORMAP",
    "INTERVAL_ROLE",
    "RELIABILITY_COLUMNS",
    "calibration_text",
    "interval_layer_name",
    "interval_layer_specs",
    "interval_widths",
    "masked_values",
    "mean_widths",
    "reliability_table",
    "wide_mask",
]
